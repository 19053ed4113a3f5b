"""The router mesh as the controller sees it: who is linked to whom, at what cost, and where
each service is bound; and the routes each router should install.

Measured state is soft and lives in memory: every router reports its bound services, its
live circuits and its live router links (with the keepalive RTT) every few seconds
(`report`), and a router not heard from within `stale_after` drops out of the graph. What an
operator decides (admin costs of routers and links, no-transit routers, each service's
terminator strategy) is a `MeshPolicy`, loaded from the database by the API
(`store/mesh_models.py`) and handed in with `set_policy`.

Rules of this file:
- An edge counts only if both of its routers report it: a router cannot invent a link to
  another router (the most a lying router can do is claim services or misstate its own
  RTTs and load, which steers dials towards itself; the last router still re-checks every
  ticket and the end-to-end handshake still authenticates the host).
- Cost of crossing an edge u -> v: `HOP_COST + admin cost of v + admin cost of the link
  + RTT in ms + load term of v` (the RTT is the larger of the two ends' measurements;
  unmeasured links count `UNMEASURED_RTT_MS`; the load term grows with v's live circuits
  and is capped at `LOAD_COST_MAX`, so load shifts ties and near-ties, never a path
  across the world). Edges are symmetric but for the load and router terms, so one
  Dijkstra per service, walking edges backwards from all its hosts at once, gives every
  router's distance to the nearest host.
- A no-transit router is never a middle hop: Dijkstra does not walk through it, and no
  router gets a route via it unless it hosts the service. It can still be the first
  router (its endpoints dial through it) and the last (its hosts are reached). A service
  limited to some transit routers (`MeshPolicy.transit_only`: "only through these
  routers") treats every other router as no-transit for its dials.
- A router gets a route to a service through each neighbour that is strictly closer to
  the service (its nearest host) than the router itself (the feasibility condition of
  distance-vector protocols). Every hop then strictly lowers the distance, so a dial can
  never loop, even when a router falls back to its second route after a link died and
  before it asked again; and the fallback is there at once.
- Precedence across routers: a router reports, beside its services, the best precedence
  of the hosts bound there when it is a standby rank (`standby`: service -> 1..9; absent
  means a primary). A service's destinations are the routers with its best rank only, so
  a router with only standby hosts gets routes to a primary elsewhere (and uses its own
  standby when those routes fail: `router/routes.py`, `router/redial.py`); with no
  primary anywhere, the best standbys are the destinations.
- Small wobbles of RTT and load are ignored (`_settled`): the graph changes only when a
  link or service comes or goes, an RTT or load moves by more than a fifth, or the policy
  changes. Paths are computed on a snapshot of the graph (edges and each service's
  distances), rebuilt on the first report after a change but at most every
  `recompute_every` seconds: a thousand routers reporting an unchanged mesh cost nothing
  but lookups, a burst of changes (a cold start, a flapping link) costs one rebuild per
  interval rather than one per report, and routes do not flap with noise. `version`
  counts rebuilds; routers watching it report again and get the new snapshot's routes.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "HOP_COST",
    "LOAD_COST_MAX",
    "STRATEGIES",
    "UNMEASURED_RTT_MS",
    "LinkGraph",
    "MeshPolicy",
    "MeshRoute",
    "RouterReport",
    "load_cost",
    "routes_for",
]

HOP_COST = 1.0
"""What crossing one router costs beyond its latency: among equally fast paths, fewer hops win."""
UNMEASURED_RTT_MS = 50.0
"""The RTT a link counts before its first keepalive answer: worse than any measured LAN link."""
LOAD_COST_MAX = 10.0
"""The most a router's load adds to a path entering it (in RTT milliseconds)."""
LOAD_HALF = 1000
"""Live circuits at which a router's load term is half of `LOAD_COST_MAX`."""
MAX_SERVICES = 4096
MAX_LINKS = 1024
STRATEGIES = ("smart", "weighted", "random", "sticky", "precedence")
"""How a router picks among a service's hosts (see `router/terminators.py`)."""
_WOBBLE = 0.2  # relative change of an RTT or load that is news
_WOBBLE_MS = 1.0  # and the absolute change below which an RTT never is


@dataclass(frozen=True, slots=True)
class MeshRoute:
    """Reach `service` through the neighbouring router `via` at total `cost`."""

    service: str
    via: str
    cost: float


@dataclass(slots=True)
class RouterReport:
    """What one router last said: services bound there, its live router links (peer SPIFFE
    ID -> RTT in ms, None if not yet measured), when (unix seconds), its live circuits, and
    the services whose best host there is a standby (service -> precedence rank)."""

    services: frozenset[str]
    links: dict[str, float | None]
    at: float
    circuits: int = 0
    standby: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MeshPolicy:
    """What operators decided, by router SPIFFE ID: admin costs of routers and of links
    (keyed by the pair), routers that carry no transit, and services' strategies."""

    router_costs: Mapping[str, float] = field(default_factory=dict)
    link_costs: Mapping[frozenset[str], float] = field(default_factory=dict)
    no_transit: frozenset[str] = frozenset()
    strategies: Mapping[str, str] = field(default_factory=dict)
    transit_only: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """service -> the only routers its dials may cross as middle hops (absent: any)."""

    def stops(self, service: str) -> Callable[[str], bool]:
        """Whether a router may not be a middle hop of `service`'s dials."""
        allowed = self.transit_only.get(service)
        no_transit = self.no_transit
        if allowed is None:
            return no_transit.__contains__
        return lambda router: router in no_transit or router not in allowed


def load_cost(circuits: int) -> float:
    """The load term for a router with `circuits` live circuits (0 .. LOAD_COST_MAX)."""
    if circuits <= 0:
        return 0.0
    return round(LOAD_COST_MAX * circuits / (circuits + LOAD_HALF), 3)


def routes_for(
    source: str,
    reports: Mapping[str, RouterReport],
    admin_costs: Mapping[str, float] | None = None,
    *,
    policy: MeshPolicy | None = None,
) -> list[MeshRoute]:
    """Every feasible route `source` should install (see the module rules), cheapest first
    per service. Pure: the same reports give the same routes. `admin_costs` is a shorthand
    for a policy of router costs only."""
    if policy is None:
        policy = MeshPolicy(router_costs=dict(admin_costs or {}))
    edges = _edges(reports, policy)
    incoming = _reverse(edges)
    hosts = _hosts(reports)
    dists = {
        service: _dijkstra(incoming, targets, policy.stops(service))
        for service, targets in hosts.items()
    }
    return _feasible(source, edges.get(source, {}), hosts, dists, policy)


class LinkGraph:
    """The controller's in-memory view of the mesh (thread-safe: API handlers run in a pool)."""

    def __init__(self, stale_after: float = 30.0, recompute_every: float = 0.0) -> None:
        self.stale_after = stale_after
        self.recompute_every = recompute_every
        self.version = 0  # snapshots built: moves when a route could change
        self._dirty = True
        self._built_at = float("-inf")
        self._reports: dict[str, RouterReport] = {}
        self._policy = MeshPolicy()
        self._lock = threading.Lock()
        self._edges: dict[str, dict[str, float]] | None = None
        self._incoming: dict[str, dict[str, float]] = {}
        self._hosts: dict[str, list[str]] = {}
        self._dists: dict[str, dict[str, float]] = {}
        self._watchers: list[Callable[[int], None]] = []
        self._answered: dict[str, int] = {}  # router -> digest of its last answer
        self.computed = 0  # Dijkstra runs, for statistics and the benchmark

    def report(
        self,
        router: str,
        services: Iterable[str],
        links: Mapping[str, float | None],
        now: float,
        circuits: int = 0,
        *,
        mono: float | None = None,
        standby: Mapping[str, int] | None = None,
    ) -> list[MeshRoute]:
        """Record `router`'s state and answer with its routes. `now` (unix seconds) ages
        reports; `mono` (a monotonic clock, default `now`) paces snapshot rebuilds;
        `standby` ranks its services whose best host is a standby."""
        bound = frozenset(services)
        fresh = RouterReport(
            bound,
            {p: r for p, r in links.items() if p != router},
            now,
            circuits,
            {s: rank for s, rank in (standby or {}).items() if s in bound and rank > 0},
        )
        with self._lock:
            old = self._reports.get(router)
            changed = old is None or not _settled(old, fresh)
            if not changed and old is not None:
                # Keep the values routes were computed with: noise must not move them.
                fresh.links = {p: old.links[p] for p in fresh.links}
                fresh.circuits = old.circuits
            self._reports[router] = fresh
            if self._expire(now) or changed:
                self._dirty = True
            self._rebuild_if_due(now if mono is None else mono)
            routes = self._routes(router)
            self._answered[router] = self._digest(router, routes)
            return routes

    def changed_for(self, router: str) -> bool:
        """Whether `router`'s routes (or its services' strategies) on the current snapshot
        differ from what it was last answered: a watch wakes only routers whose answer
        would change, so a rebuild does not make every router of the mesh report at once."""
        with self._lock:
            if router not in self._answered:
                return True
            return self._digest(router, self._routes(router)) != self._answered[router]

    def _digest(self, router: str, routes: list[MeshRoute]) -> int:
        report = self._reports.get(router)
        services = report.services if report is not None else frozenset()
        strategies = sorted(self.strategies_for(services).items())
        return hash((tuple(routes), tuple(strategies)))

    def refresh(self, mono: float) -> None:
        """Rebuild the snapshot if a change waits and its interval is over (so a change
        made in a quiet moment still reaches the watchers without another report)."""
        with self._lock:
            self._rebuild_if_due(mono)

    def set_policy(self, policy: MeshPolicy) -> None:
        """Replace the operators' settings (loaded from the database)."""
        with self._lock:
            if policy != self._policy:
                self._policy = policy
                self._bump()  # an operator's change applies at once

    @property
    def policy(self) -> MeshPolicy:
        return self._policy

    def strategies_for(self, services: Iterable[str]) -> dict[str, str]:
        """The configured strategy of each of `services` that has one."""
        strategies = self._policy.strategies
        return {s: strategies[s] for s in services if s in strategies}

    def watch(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call `callback(version)` (from whatever thread changed the graph) on every
        change; returns the function that stops it. Routers long-poll on this."""
        with self._lock:
            self._watchers.append(callback)

        def stop() -> None:
            with self._lock:
                if callback in self._watchers:
                    self._watchers.remove(callback)

        return stop

    def path(self, source: str, service: str) -> list[dict[str, object]]:
        """The path a dial for `service` entering at `source` takes by the best routes of
        the current snapshot: each router with the RTT of the link that reached it (the
        larger end's measurement). Ends at a host's router, or where no route goes on."""
        with self._lock:
            edges = self._current_edges()
            self._routes(source)  # the snapshot's distances for every service
            targets = self._hosts.get(service, [])
            hops: list[dict[str, object]] = [{"router": source, "rtt_ms": None}]
            node = source
            if not targets:
                return [*hops, {"router": None, "rtt_ms": None}]  # hosted nowhere
            for _ in range(len(self._reports)):
                if node in targets:
                    break
                only = {service: targets}
                routes = _feasible(node, edges.get(node, {}), only, self._dists, self._policy)
                if not routes:
                    hops.append({"router": None, "rtt_ms": None})  # no way on from here
                    break
                nxt = routes[0].via
                measured = [
                    r
                    for r in (
                        self._reports[node].links.get(nxt),
                        self._reports[nxt].links.get(node),
                    )
                    if r is not None
                ]
                hops.append({"router": nxt, "rtt_ms": max(measured) if measured else None})
                node = nxt
            return hops

    def forget(self, router: str) -> None:
        with self._lock:
            if self._reports.pop(router, None) is not None:
                self._bump()

    def paths(self) -> dict[str, object]:
        """The graph for operators: routers with load and services, confirmed edges."""
        with self._lock:
            edges = self._current_edges()
            return {
                "version": self.version,
                "routers": {
                    name: {"services": sorted(r.services), "circuits": r.circuits}
                    for name, r in self._reports.items()
                },
                "edges": [
                    {"from": a, "to": b, "cost": round(cost, 3)}
                    for a, out in sorted(edges.items())
                    for b, cost in sorted(out.items())
                ],
            }

    def statistics(self) -> dict[str, int]:
        with self._lock:
            reports = list(self._reports.values())
            version, computed = self.version, self.computed
        return {
            "routers": len(reports),
            "links": sum(len(r.links) for r in reports) // 2,
            "services": len({s for r in reports for s in r.services}),
            "version": version,
            "computed": computed,
        }

    # -- internals (under the lock) -----------------------------------------------------

    def _rebuild_if_due(self, mono: float) -> None:
        if self._dirty and mono - self._built_at >= self.recompute_every:
            self._built_at = mono
            self._bump()

    def _bump(self) -> None:
        self.version += 1
        self._dirty = False
        self._edges = None
        self._dists.clear()
        for watcher in list(self._watchers):
            watcher(self.version)

    def _current_edges(self) -> dict[str, dict[str, float]]:
        if self._edges is None:
            self._edges = _edges(self._reports, self._policy)
            self._incoming = _reverse(self._edges)
            self._hosts = _hosts(self._reports)
        return self._edges

    def _routes(self, source: str) -> list[MeshRoute]:
        edges = self._current_edges()
        for service, targets in self._hosts.items():
            if service not in self._dists:
                stops = self._policy.stops(service)
                self._dists[service] = _dijkstra(self._incoming, targets, stops)
                self.computed += 1
        return _feasible(source, edges.get(source, {}), self._hosts, self._dists, self._policy)

    def _expire(self, now: float) -> bool:
        stale = [n for n, r in self._reports.items() if now - r.at > self.stale_after]
        for name in stale:
            del self._reports[name]
            self._answered.pop(name, None)
        return bool(stale)


def _settled(old: RouterReport, new: RouterReport) -> bool:
    """Whether `new` says nothing that could move a route compared with `old`."""
    if (
        old.services != new.services
        or old.links.keys() != new.links.keys()
        or old.standby != new.standby
    ):
        return False
    for peer, rtt in new.links.items():
        before = old.links[peer]
        if (before is None) != (rtt is None):
            return False
        moved = before is not None and rtt is not None
        if moved and abs(rtt - before) > max(_WOBBLE_MS, _WOBBLE * before):  # type: ignore[operator]
            return False
    a, b = load_cost(old.circuits), load_cost(new.circuits)
    return abs(a - b) <= max(0.1, _WOBBLE * a)


def _edges(reports: Mapping[str, RouterReport], policy: MeshPolicy) -> dict[str, dict[str, float]]:
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
            edges.setdefault(a, {})[b] = (
                HOP_COST
                + policy.router_costs.get(b, 0.0)
                + policy.link_costs.get(frozenset((a, b)), 0.0)
                + rtt
                + load_cost(other.circuits)
            )
    return edges


def _reverse(edges: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    incoming: dict[str, dict[str, float]] = {}
    for a, out in edges.items():
        for b, cost in out.items():
            incoming.setdefault(b, {})[a] = cost
    return incoming


def _hosts(reports: Mapping[str, RouterReport]) -> dict[str, list[str]]:
    """Service -> the routers its dials should reach: those whose hosts have its best
    precedence rank (primaries where there are any)."""
    ranked: dict[str, list[tuple[int, str]]] = {}
    for name in sorted(reports):
        report = reports[name]
        for service in report.services:
            ranked.setdefault(service, []).append((report.standby.get(service, 0), name))
    hosts: dict[str, list[str]] = {}
    for service, routers in ranked.items():
        best = min(rank for rank, _ in routers)
        hosts[service] = [name for rank, name in routers if rank == best]
    return hosts


def _feasible(
    source: str,
    neighbours: Mapping[str, float],
    hosts: Mapping[str, list[str]],
    dists: Mapping[str, Mapping[str, float]],
    policy: MeshPolicy,
) -> list[MeshRoute]:
    routes: list[MeshRoute] = []
    for service in sorted(hosts):
        if source in hosts[service]:
            continue  # bound here: the router's own terminators win
        # Distances to the nearest host (the service as one destination): feasibility per
        # host would let two hosts' routes chain into a loop.
        dist = dists[service]
        stops = policy.stops(service)
        mine = dist.get(source)
        if mine is None:
            continue  # not reachable from here
        best = {
            peer: cost + dist[peer]
            for peer, cost in neighbours.items()
            if peer in dist and dist[peer] < mine and (not stops(peer) or dist[peer] == 0)
        }
        for peer, total in sorted(best.items(), key=lambda item: (item[1], item[0])):
            routes.append(MeshRoute(service, peer, round(total, 3)))
    return routes


def _dijkstra(
    incoming: Mapping[str, Mapping[str, float]],
    targets: list[str],
    stops: Callable[[str], bool],
) -> dict[str, float]:
    """Every router's distance to the nearest of `targets`, walking edges backwards
    (`incoming[v][u]` is the cost of u -> v), never through a router that `stops`."""
    dist = dict.fromkeys(targets, 0.0)
    heap = [(0.0, target) for target in targets]
    while heap:
        d, node = heapq.heappop(heap)
        if d > dist.get(node, float("inf")):
            continue
        if d > 0 and stops(node):
            continue  # it may be a first hop (it has a distance) but never a middle one
        for prev, cost in incoming.get(node, {}).items():
            nd = d + cost
            if nd < dist.get(prev, float("inf")):
                dist[prev] = nd
                heapq.heappush(heap, (nd, prev))
    return dist
