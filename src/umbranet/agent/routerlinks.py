"""The agent's links to routers: the best few by measured round-trip time, not all of them.

An agent may see many routers (the controller lists every one with an address). A link to
each costs a TLS session, keepalives and router memory on both sides for nothing: dials go
through the best one (the SDK's `RouterRanking`), the next one or two are there so a dial
can move without a handshake when the best dies. So `RouterLinks` keeps links to the
`keep` routers with the lowest RTT (`MAX_ROUTER_LINKS`, as the SDK does for a grant's
routers) and lets the others go.

How it measures and decides (the rules of this file):
1. A router's RTT is what its link measured: half the TLS + HELLO exchange when it was made,
   then the link keepalive's (`RouterRanking.rtt_ms`). Each figure is remembered after the
   link is let go, so the choice is between measured routers.
2. Routers never measured are linked once to measure them, at most `probe_batch` per
   round; every `reprobe` seconds the figures of routers not linked are measured again
   (their RTT may have improved), the oldest first. A probe link that is not among the best
   is let go at once.
3. The best `keep` routers by RTT are linked; a linked router keeps its place unless another
   is better by `margin` (a ratio) and `slack_ms`, so two routers of nearly equal RTT do
   not make links flap.
4. A router that could not be linked is passed over for `hold` seconds.
5. A link is only let go when idle: no stream, dial or binding on it (a hosted service binds
   at every router its grant names, so those links stay up with their bindings).
6. A linked router that dies wakes the keeper at once (`Context.link_lost_hooks`): the next
   best router is linked in its place.
Every decision is counted (`router_linked`, `router_released`, `router_probe_failed`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from umbranet.agent.stats import Counters
from umbranet.sdk import Context, UmbraError
from umbranet.sdk.routers import MAX_ROUTER_LINKS

__all__ = ["RouterLinks", "choose"]

log = logging.getLogger("umbranet.agent")

REPROBE = 300.0
HOLD = 30.0
PROBE_BATCH = 8
MARGIN = 1.2
SLACK_MS = 0.5


@dataclass(slots=True)
class _Figure:
    rtt_ms: float
    at: float  # loop time of the measurement


def choose(
    candidates: Sequence[str],
    rtt_ms: Callable[[str], float | None],
    linked: set[str],
    keep: int,
    *,
    margin: float = MARGIN,
    slack_ms: float = SLACK_MS,
) -> list[str]:
    """The `keep` routers to be linked, best first (rule 3). Unmeasured ones come last in
    the controller's order, so with no figure at all the first `keep` are chosen."""

    def score(item: tuple[int, str]) -> tuple[bool, float, int]:
        index, address = item
        rtt = rtt_ms(address)
        if rtt is None:
            return (True, 0.0, index)
        if address in linked:  # the incumbent's bonus: hysteresis against flapping
            rtt = max(0.0, rtt / margin - slack_ms)
        return (False, rtt, index)

    ranked = sorted(enumerate(candidates), key=score)
    return [address for _, address in ranked[:keep]]


class RouterLinks:
    """Keeps a context's links to its best routers; see the module rules."""

    def __init__(
        self,
        context: Context,
        counters: Counters,
        *,
        keep: int = MAX_ROUTER_LINKS,
        reprobe: float = REPROBE,
        hold: float = HOLD,
        probe_batch: int = PROBE_BATCH,
    ) -> None:
        self.context = context
        self.counters = counters
        self.keep = keep
        self.reprobe = reprobe
        self.hold = hold
        self.probe_batch = probe_batch
        self.candidates: list[str] = []
        self._figures: dict[str, _Figure] = {}
        self._held_until: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        context.link_lost_hooks.append(self._lost)

    def update(self, candidates: Sequence[str]) -> None:
        """The routers there are now (from the controller); relink soon."""
        self.candidates = list(dict.fromkeys(candidates))
        self._wake.set()

    def linked(self) -> list[str]:
        """Candidates with a live link, best first."""
        return [a for a in self._ranked(self.candidates) if self._live(a)]

    def statistics(self) -> dict[str, object]:
        return {
            "keep": self.keep,
            "linked": self.linked(),
            "rtt_ms": {a: f.rtt_ms for a, f in self._figures.items()},
        }

    async def run(self) -> None:
        """Settle whenever woken (new candidates, a lost link), and re-probe periodically."""
        while True:
            self._wake.clear()
            await self.settle()
            # `asyncio.wait`, not `wait_for`: on Python 3.11 a cancel that lands while the
            # event is being set is swallowed by `wait_for`, and the agent's close would hang.
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait([waiter], timeout=self._next_wait())
            finally:
                waiter.cancel()

    async def settle(self) -> None:
        """One round of the module's rules: measure, link the best, let the others go."""
        async with self._lock:
            now = asyncio.get_running_loop().time()
            self._remember()
            for address in self._to_probe(now):
                await self._link(address, now, probe=True)
            self._remember()
            for _ in range(len(self.candidates)):  # bounded: each turn links or holds one
                best = self._best(now)
                missing = [a for a in best if not self._live(a)]
                if not missing:
                    break
                await self._link(missing[0], now, probe=False)
                self._remember()
            chosen = set(self._best(now))
            for address in self.candidates:
                if address not in chosen and self._live(address) and self.context.release(address):
                    self.counters.add("router_released")
                    log.info("router link released (not among the best): %s", address)

    # -- internals ----------------------------------------------------------------------

    def _best(self, now: float) -> list[str]:
        usable = [a for a in self.candidates if self._held_until.get(a, 0.0) <= now]
        linked = {a for a in usable if self._live(a)}
        return choose(usable, self._rtt, linked, self.keep)

    def _ranked(self, addresses: Sequence[str]) -> list[str]:
        return sorted(addresses, key=lambda a: (self._rtt(a) is None, self._rtt(a) or 0.0))

    def _rtt(self, address: str) -> float | None:
        figure = self._figures.get(address)
        return figure.rtt_ms if figure is not None else None

    def _live(self, address: str) -> bool:
        return bool(self.context.statistics()["routers"].get(address))

    def _remember(self) -> None:
        """Rule 1: take each live link's current figure."""
        now = asyncio.get_running_loop().time()
        rtts = self.context.statistics()["router_rtt_ms"]
        for address, rtt in rtts.items():
            if isinstance(rtt, int | float):
                self._figures[address] = _Figure(float(rtt), now)

    def _to_probe(self, now: float) -> list[str]:
        """Rule 2: never measured first, then figures older than `reprobe`, oldest first."""
        due = [
            a
            for a in self.candidates
            if not self._live(a)
            and self._held_until.get(a, 0.0) <= now
            and (a not in self._figures or now - self._figures[a].at >= self.reprobe)
        ]
        due.sort(
            key=lambda a: (a in self._figures, self._figures[a].at if a in self._figures else 0)
        )
        return due[: self.probe_batch]

    async def _link(self, address: str, now: float, *, probe: bool) -> None:
        try:
            await self.context.connection(address)
        except (UmbraError, OSError) as exc:
            self._held_until[address] = now + self.hold  # rule 4
            self.counters.add("router_probe_failed" if probe else "router_connect_failed")
            log.info("router %s unreachable: %s", address, exc)
            return
        if not probe:
            self.counters.add("router_linked")

    def _lost(self, address: str) -> None:
        if address in self.candidates:
            self._wake.set()  # rule 6

    def _next_wait(self) -> float:
        """Until the next figure is due for re-measuring (bounded below)."""
        now = asyncio.get_running_loop().time()
        if any(
            a not in self._figures and self._held_until.get(a, 0.0) <= now for a in self.candidates
        ):
            return 1.0  # routers left unmeasured by the last round's batch: soon
        due = [
            f.at + self.reprobe - now
            for a, f in self._figures.items()
            if a in self.candidates and not self._live(a)
        ]
        return max(1.0, min(due, default=self.reprobe))
