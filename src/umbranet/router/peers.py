"""Keeping a router's links to its neighbours up, and its routes current.

`Peers` is the asyncio shell that makes a router part of the mesh:

- It learns the other routers (SPIFFE ID and listener address) from the controller and
  keeps one link per pair: the router with the lower SPIFFE ID dials (`Router.dial_router`),
  the other one only accepts, so two routers never race to build two links. A dropped link
  is dialed again with exponential backoff and jitter (`Backoff`), reset once a link held.
- It reports the services bound here, its live circuits (its load) and each live
  neighbour link with its keepalive RTT (`MeshControl.report`), and installs the routes the
  controller answers with, replacing the previous set (`RouteTable.replace_remote`), and
  the services' terminator strategies. It reports every `interval`, at once whenever a
  neighbour link comes up or goes down (the switch has already dropped the routes through
  a lost link, `RouteTable.link_gone`, and the answer brings the new ones), and at once
  when the controller's graph changed anywhere (`MeshControl.watch`, a long poll): a link
  that died or degraded between two other routers reroutes this one's new dials too.
- Each report's path setup time (from the change that caused it to the routes installed)
  is kept in `statistics()` and logged.

The controller being down costs freshness, not service: the routes installed last stay
until a link they use is lost; reports are retried every `interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from umbranet.client.mesh_calls import MeshRoute
from umbranet.router.server import Router

__all__ = [
    "Backoff",
    "MeshAnswer",
    "MeshControl",
    "PeerAddress",
    "Peers",
    "plan_routes",
    "should_dial",
]

log = logging.getLogger("umbranet.router.mesh")


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Another router of the network and where its link listener is."""

    spiffe_id: str
    address: str


@dataclass(frozen=True, slots=True)
class MeshAnswer:
    """The controller's answer to a report: routes, the strategies of services bound here,
    and the graph version they come from."""

    routes: list[MeshRoute]
    strategies: dict[str, str] = field(default_factory=dict)
    version: int = 0
    no_transit: bool = False  # the operator marked this router: never a middle hop


class MeshControl(Protocol):
    """What the mesh needs from the controller (the HTTP client, or an in-memory twin)."""

    async def peers(self) -> list[PeerAddress]:
        """Every other router with a registered address."""

    async def report(
        self,
        services: Collection[str],
        links: Mapping[str, float | None],
        circuits: int,
        standby: Mapping[str, int],
    ) -> MeshAnswer:
        """Say what is bound here (and which services only by standby hosts, with their
        rank), which neighbour links are up (RTT in ms) and how many circuits are live; get
        routes."""

    async def watch(self, after: int) -> int:
        """The graph version once it is not `after` (or after a while: the same one)."""


def should_dial(me: str, peer: str) -> bool:
    """One link per pair: the lower SPIFFE ID dials, the higher one accepts."""
    return me < peer


def plan_routes(
    routes: Iterable[MeshRoute], links: Mapping[str, Hashable]
) -> tuple[dict[str, dict[Hashable, float]], int]:
    """The RouteTable's remote routes (service -> link -> cost) for the controller's routes,
    and how many were skipped because this router has no live link to their next hop (yet,
    or any more: the next report fixes either)."""
    table: dict[str, dict[Hashable, float]] = {}
    skipped = 0
    for route in routes:
        link = links.get(route.via)
        if link is None:
            skipped += 1
            continue
        table.setdefault(route.service, {})[link] = route.cost
    return table, skipped


class Backoff:
    """Exponential backoff with full jitter: `next()` is the wait before the next attempt."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self._ceiling = initial

    def next(self) -> float:
        wait = self._rng.uniform(self._ceiling / 2, self._ceiling)
        self._ceiling = min(self._ceiling * 2, self.maximum)
        return wait

    def reset(self) -> None:
        self._ceiling = self.initial


class Peers:
    """`async with Peers(router, control) as peers:` keeps the mesh up until the block ends."""

    def __init__(
        self,
        router: Router,
        control: MeshControl,
        *,
        interval: float = 5.0,
        backoff: tuple[float, float] = (0.2, 10.0),
        dial_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.router = router
        self.control = control
        self.interval = interval
        self.dial_timeout = dial_timeout
        self.counters: Counter[str] = Counter()
        self.routes: list[MeshRoute] = []  # the controller's last answer
        self.version = 0  # the graph version of those routes
        self.setup_ms: float | None = None  # the last path setup time
        self.setup_ms_max = 0.0
        self._changed_at: float | None = None  # when the pending change happened (loop time)
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._known: dict[str, str] = {}  # peer SPIFFE ID -> address, from the controller
        self._dialers: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._reported = asyncio.Event()
        self._begun = 0  # reports started
        self._done = 0  # the newest report whose routes are installed (by start order)
        self._group: asyncio.TaskGroup | None = None
        self._main: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Peers:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self.router.on_mesh_change = self._change
        self._main = self._group.create_task(self._run())
        self._watcher = self._group.create_task(self._watch())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.router.on_mesh_change = None
        assert self._group is not None
        for task in [self._main, self._watcher, *self._dialers.values()]:
            if task is not None:
                task.cancel()
        await self._group.__aexit__(exc_type, exc, tb)
        self._group = self._main = None

    def statistics(self) -> dict[str, object]:
        return {
            "known": len(self._known),
            "dialing": sorted(self._dialers),
            "links": sorted(self.router.router_links()),
            "routes": len(self.routes),
            "version": self.version,
            "setup_ms": self.setup_ms,
            "setup_ms_max": self.setup_ms_max,
            "counters": dict(self.counters),
        }

    async def wait_reported(self) -> None:
        """Report now, and return once routes from a report begun after this call are
        installed (what was bound or linked before the call is in them)."""
        after = self._begun
        self._changed.set()
        while self._done <= after:
            self._reported.clear()
            await self._reported.wait()

    # -- internals ----------------------------------------------------------------------

    def _change(self) -> None:
        """Something that moves routes happened here (a link came or went): report now."""
        if self._changed_at is None:
            self._changed_at = asyncio.get_running_loop().time()
        self._changed.set()

    async def _watch(self) -> None:
        """Long-poll the controller's graph version; a new one means report again."""
        backoff = Backoff(self.interval / 4, self.interval, self._rng)
        while True:
            try:
                version = await self.control.watch(self.version)
            except Exception as exc:  # the controller is away: the reports retry as well
                self.counters["watch_failed"] += 1
                log.debug("mesh: cannot watch the graph: %s", exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            if version != self.version:
                self.counters["pushed"] += 1
                self._change()
                # Let the report catch up before asking again (no busy loop on a stale copy).
                await self._settle(version)

    async def _settle(self, version: int) -> None:
        for _ in range(50):
            if self.version >= version:
                return
            await asyncio.sleep(self.interval / 50)

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            await self._refresh_peers()
            await self._report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.interval)

    async def _refresh_peers(self) -> None:
        try:
            peers = await self.control.peers()
        except Exception as exc:  # the controller is away: keep what we know
            self.counters["peers_failed"] += 1
            log.warning("mesh: cannot list routers: %s", exc)
            return
        me = self.router.identity.spiffe_id
        self._known = {p.spiffe_id: p.address for p in peers if p.spiffe_id != me}
        for spiffe_id in list(self._dialers):
            if spiffe_id not in self._known:  # removed (or unregistered): stop dialing it
                self._dialers.pop(spiffe_id).cancel()
        for spiffe_id in self._known:
            if should_dial(me, spiffe_id) and spiffe_id not in self._dialers:
                assert self._group is not None
                self._dialers[spiffe_id] = self._group.create_task(self._keep_link(spiffe_id))

    async def _keep_link(self, spiffe_id: str) -> None:
        """Dial `spiffe_id` and dial it again whenever the link drops, with backoff."""
        backoff = Backoff(*self._backoff, self._rng)
        loop = asyncio.get_running_loop()
        while True:
            address = self._known.get(spiffe_id)
            if address is None:
                return
            try:
                link = await self.router.dial_router(address, spiffe_id, self.dial_timeout)
            except (OSError, TimeoutError) as exc:
                self.counters["dial_failed"] += 1
                log.info("mesh: cannot reach %s at %s: %r", spiffe_id, address, exc)
            else:
                self.counters["dialed"] += 1
                log.info("mesh: linked to %s at %s", spiffe_id, address)
                held_from = loop.time()
                await asyncio.shield(link.lost)
                self.counters["lost"] += 1
                self._change()
                if loop.time() - held_from > backoff.maximum:
                    backoff.reset()  # it held a while: the next drop is news, not a flap
            await asyncio.sleep(backoff.next())

    async def _report(self) -> None:
        self._begun += 1
        generation = self._begun
        links = self.router.router_links()
        rtts = {
            peer: None if state.session.rtt is None else round(state.session.rtt * 1000, 3)
            for peer, state in links.items()
        }
        switch = self.router.switch
        services = {binding.service for binding in switch.terminators.all()}
        changed_at, self._changed_at = self._changed_at, None
        try:
            answer = await self.control.report(
                services, rtts, switch.circuits, switch.terminators.standby_ranks()
            )
        except Exception as exc:  # keep the routes we have: they are still the best known
            self.counters["report_failed"] += 1
            log.warning("mesh: cannot report state: %s", exc)
            if changed_at is not None and self._changed_at is None:
                self._changed_at = changed_at  # still pending: measure from the change
            return
        if isinstance(answer, list):  # a twin that answers with routes only
            answer = MeshAnswer(answer)
        self.counters["reports"] += 1
        self.routes = answer.routes
        self.version = max(self.version, answer.version)
        # Links may have come or gone while the report was out: map by those live now.
        table, skipped = plan_routes(answer.routes, self.router.router_links())
        self.counters["routes_skipped"] += skipped
        switch.routes.replace_remote(table)
        switch.terminators.set_strategies(answer.strategies)
        switch.no_transit = self.router.config.no_transit or answer.no_transit
        if changed_at is not None:
            took = (asyncio.get_running_loop().time() - changed_at) * 1000
            self.setup_ms = round(took, 3)
            self.setup_ms_max = max(self.setup_ms_max, self.setup_ms)
            log.info("mesh: %d routes installed %.1f ms after the change", len(table), took)
        self._done = max(self._done, generation)
        self._reported.set()
