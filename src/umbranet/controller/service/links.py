"""The router mesh as the controller sees it: who is linked to whom, at what cost, and where
each service is bound; and the routes each router should install.

State is soft and lives in memory: every router reports its bound services and its live
router links (with the keepalive RTT) every few seconds (`report`), and a router not heard
from within `stale_after` drops out of the graph. A controller restart therefore loses
nothing that one report interval does not rebuild, and nothing here needs the database.

Rules of this file:
- An edge counts only if both of its routers report it: a router cannot invent a link to
  another router (the most a lying router can do is claim services or misstate its own
  RTTs, which steers dials towards itself; the last router still re-checks every ticket and
  the end-to-end handshake still authenticates the host).
- Cost of crossing an edge into router v: `HOP_COST + admin cost of v + RTT in ms` (the RTT
  is the larger of the two ends' measurements; unmeasured links count `UNMEASURED_RTT_MS`).
  Edges are symmetric, so one Dijkstra per service, started from all its hosts at once,
  gives every router's distance to the nearest host.
- A router gets a route to a service through each neighbour that is strictly closer to
  the service (its nearest host) than the router itself (the feasibility condition of
  distance-vector protocols).
  Every hop then strictly lowers the distance, so a dial can never loop, even when a router
  falls back to its second route after a link died and before it asked again; and the
  fallback is there at once.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["HOP_COST", "UNMEASURED_RTT_MS", "LinkGraph", "MeshRoute", "RouterReport", "routes_for"]

HOP_COST = 1.0
"""What crossing one router costs beyond its latency: among equally fast paths, fewer hops win."""
UNMEASURED_RTT_MS = 50.0
"""The RTT a link counts before its first keepalive answer: worse than any measured LAN link."""
MAX_SERVICES = 4096
MAX_LINKS = 1024


@dataclass(frozen=True, slots=True)
class MeshRoute:
    """Reach `service` through the neighbouring router `via` at total `cost`."""

    service: str
    via: str
    cost: float


@dataclass(slots=True)
class RouterReport:
    """What one router last said: services bound there, its live router links (peer SPIFFE
    ID -> RTT in ms, None if not yet measured), when (unix seconds)."""

    services: frozenset[str]
    links: dict[str, float | None]
    at: float


def routes_for(
    source: str,
    reports: Mapping[str, RouterReport],
    admin_costs: Mapping[str, float] | None = None,
) -> list[MeshRoute]:
    """Every feasible route `source` should install (see the module rules), cheapest first
    per service. Pure: the same reports give the same routes."""
    edges = _edges(reports, admin_costs or {})
    incoming: dict[str, dict[str, float]] = {}
    for a, out in edges.items():
        for b, cost in out.items():
            incoming.setdefault(b, {})[a] = cost
    hosts: dict[str, list[str]] = {}
    for name, report in reports.items():
        for service in report.services:
            hosts.setdefault(service, []).append(name)
    neighbours = edges.get(source, {})
    routes: list[MeshRoute] = []
    for service in sorted(hosts):
        if source in hosts[service]:
            continue  # bound here: the router's own terminators win
        # Distances to the nearest host (the service as one destination): feasibility per
        # host would let two hosts' routes chain into a loop.
        dist = _dijkstra(incoming, hosts[service])
        mine = dist.get(source)
        if mine is None:
            continue  # not reachable from here
        best = {
            peer: cost + dist[peer]
            for peer, cost in neighbours.items()
            if peer in dist and dist[peer] < mine
        }
        for peer, total in sorted(best.items(), key=lambda item: (item[1], item[0])):
            routes.append(MeshRoute(service, peer, round(total, 3)))
    return routes


@dataclass
class LinkGraph:
    """The controller's in-memory view of the mesh (thread-safe: API handlers run in a pool)."""

    stale_after: float = 30.0
    _reports: dict[str, RouterReport] = field(default_factory=dict)
    _admin_costs: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report(
        self,
        router: str,
        services: Iterable[str],
        links: Mapping[str, float | None],
        now: float,
    ) -> list[MeshRoute]:
        """Record `router`'s state and answer with its routes."""
        with self._lock:
            self._reports[router] = RouterReport(
                frozenset(services), {p: r for p, r in links.items() if p != router}, now
            )
            self._expire(now)
            return routes_for(router, self._reports, self._admin_costs)

    def set_admin_cost(self, router: str, cost: float) -> None:
        """An operator's extra cost for paths entering `router` (0 to clear). Never negative:
        a path's cost must grow with every hop, or routes could loop."""
        if not cost >= 0:
            raise ValueError("an admin cost is a non-negative number")
        with self._lock:
            if cost:
                self._admin_costs[router] = cost
            else:
                self._admin_costs.pop(router, None)

    def forget(self, router: str) -> None:
        with self._lock:
            self._reports.pop(router, None)

    def statistics(self) -> dict[str, int]:
        with self._lock:
            reports = list(self._reports.values())
        return {
            "routers": len(reports),
            "links": sum(len(r.links) for r in reports) // 2,
            "services": len({s for r in reports for s in r.services}),
        }

    def _expire(self, now: float) -> None:
        for name, report in list(self._reports.items()):
            if now - report.at > self.stale_after:
                del self._reports[name]


def _edges(
    reports: Mapping[str, RouterReport], admin_costs: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    """Confirmed edges with their cost in each direction (entering the far router)."""
    edges: dict[str, dict[str, float]] = {}
    for a, report in reports.items():
        for b, rtt_a in report.links.items():
            other = reports.get(b)
            if other is None or a not in other.links:
                continue  # only one end says so: not an edge
            rtt_b = other.links[a]
            measured = [r for r in (rtt_a, rtt_b) if r is not None]
            rtt = max(measured) if measured else UNMEASURED_RTT_MS
            edges.setdefault(a, {})[b] = HOP_COST + admin_costs.get(b, 0.0) + rtt
    return edges


def _dijkstra(incoming: Mapping[str, Mapping[str, float]], targets: list[str]) -> dict[str, float]:
    """Every router's distance to the nearest of `targets`, walking edges backwards
    (`incoming[v][u]` is the cost of u -> v)."""
    dist = dict.fromkeys(targets, 0.0)
    heap = [(0.0, target) for target in targets]
    while heap:
        d, node = heapq.heappop(heap)
        if d > dist.get(node, float("inf")):
            continue
        for prev, cost in incoming.get(node, {}).items():
            nd = d + cost
            if nd < dist.get(prev, float("inf")):
                dist[prev] = nd
                heapq.heappush(heap, (nd, prev))
    return dist
