"""Which routers an endpoint prefers: the ones with the lowest measured round-trip time.

An endpoint keeps links to up to `MAX_ROUTER_LINKS` of the routers the controller names for
it, dials through the best one (its *home* router, chosen by latency as Tailscale picks its
home relay) and, when that one dies or refuses the way, through the next. The RTT is the
link keepalive's (`LinkSession.rtt`, a PING every 5 s); before the first PONG a link counts
half the time its TLS and HELLO exchange took (two round trips), and a router never
connected counts as unmeasured and keeps the controller's order behind the measured ones.
Pure bookkeeping: the context does the connecting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

__all__ = ["MAX_ROUTER_LINKS", "RETRY_ELSEWHERE", "RouterRanking"]

MAX_ROUTER_LINKS = 3
"""Routers an endpoint keeps a live link to (the best by RTT, the others warm standbys)."""
RETRY_ELSEWHERE = frozenset(
    {
        "no_terminator",
        "peer_gone",
        "router_unreachable",
        "peer_silent",
        "shutting_down",
        "overloaded",
        "transit_refused",
    }
)
"""Dial refusals about the way through one router (not about the dialer or the host's
answer): the next router may have a path."""


class _Measured(Protocol):
    @property
    def live(self) -> bool: ...

    def statistics(self) -> dict[str, object]: ...


class RouterRanking:
    """Router address -> measured RTT, and the order to try routers in."""

    def __init__(self) -> None:
        self._connect_ms: dict[str, float] = {}

    def connected(self, address: str, seconds: float) -> None:
        """A link to `address` was made in `seconds` (TLS and HELLO: about two RTTs)."""
        self._connect_ms[address] = seconds * 1000 / 2

    def rtt_ms(self, address: str, connection: _Measured | None) -> float | None:
        if connection is None or not connection.live:
            return None
        link = connection.statistics().get("link")
        measured = link.get("rtt_ms") if isinstance(link, dict) else None
        if isinstance(measured, int | float):
            return float(measured)
        return self._connect_ms.get(address)

    def order(self, addresses: Sequence[str], connections: Mapping[str, _Measured]) -> list[str]:
        """`addresses` best first: measured live links by RTT, then the rest in the
        controller's order."""
        if len(addresses) < 2:
            return list(addresses)  # nothing to rank: no link statistics read on every dial

        def key(item: tuple[int, str]) -> tuple[bool, float, int]:
            index, address = item
            rtt = self.rtt_ms(address, connections.get(address))
            return (rtt is None, rtt or 0.0, index)

        return [address for _, address in sorted(enumerate(addresses), key=key)]

    def snapshot(self, connections: Mapping[str, _Measured]) -> dict[str, float | None]:
        """Each linked router's RTT in ms (None before the first measurement)."""
        return {a: self.rtt_ms(a, c) for a, c in connections.items()}
