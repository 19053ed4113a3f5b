"""Which peer carries which routes in network mode (pure): subnet routes and the exit node.

The view gives, for each peer, the approved routes this identity may reach into
(``routes``). A subnet route is used from the first peer (by name) that offers it, so two
routers advertising one LAN do not fight over it (the other is counted as a conflict); the
exit routes (``0.0.0.0/0``, ``::/0``) are used only from the peer named by ``--exit-node``.
What is used becomes that peer's allowed IPs in the WireGuard device (so packets from the
LAN or the internet are accepted from it, and packets there are sent to it) and, for
subnets, a kernel route via the TUN; the exit node's default routes live in their own
routing table (`tunplan.route_through_exit`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["RouteChoice", "choose_routes"]


@dataclass(frozen=True, slots=True)
class RouteChoice:
    """Per peer key, the prefixes it carries; the subnet prefixes to route in the main table;
    and the counted oddities (conflicts, an exit node that is not offered)."""

    by_peer: dict[bytes, list[str]] = field(default_factory=dict)
    subnets: list[str] = field(default_factory=list)
    conflicts: int = 0
    exit_found: bool = False


def choose_routes(
    offered: Mapping[bytes, tuple[str, tuple[str, ...]]], exit_node: str | None, *, ipv6: bool
) -> RouteChoice:
    """``offered``: peer key -> (peer name, routes the view gives us from it)."""
    choice = RouteChoice()
    taken: set[str] = set()
    conflicts = 0
    exit_found = False
    for key, (name, routes) in sorted(offered.items(), key=lambda kv: kv[1][0]):
        for text in routes:
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                continue
            if network.version == 6 and not ipv6:
                continue
            prefix = str(network)
            if network.prefixlen == 0:
                if name != exit_node:
                    continue
                exit_found = True
            elif prefix in taken:
                conflicts += 1
                continue
            else:
                taken.add(prefix)
                choice.subnets.append(prefix)
            choice.by_peer.setdefault(key, []).append(prefix)
    return RouteChoice(choice.by_peer, sorted(choice.subnets), conflicts, exit_found)
