"""The controller's mesh routes in memory, for routers in one process (`router/peers.py`'s
`MeshControl` without HTTP): the router registry and the same `LinkGraph` the controller's
API serves. Used by `bench.failover` and the mesh tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping

from umbranet.client.controller import MeshRoute
from umbranet.controller.service.links import LinkGraph
from umbranet.router import Router, RouterConfig
from umbranet.router.peers import MeshAnswer, PeerAddress, Peers
from umbranet.testing import LocalNetwork

BOUND = 30.0  # every wait is bounded by this (a deadline, not a timing figure)

__all__ = ["TwinController", "TwinMesh", "meshed", "until"]


class TwinController:
    """The controller's mesh routes, in memory: router registry + `LinkGraph`."""

    def __init__(self) -> None:
        self.graph = LinkGraph()
        self.addresses: dict[str, str] = {}
        self.cut: set[frozenset[str]] = set()  # pairs that cannot reach each other

    def control(self, me: str) -> TwinMesh:
        return TwinMesh(self, me)


@dataclasses.dataclass
class TwinMesh:
    """One router's side of the twin."""

    twin: TwinController
    me: str

    async def peers(self) -> list[PeerAddress]:
        return [
            PeerAddress(spiffe_id, address)
            for spiffe_id, address in self.twin.addresses.items()
            if spiffe_id != self.me and frozenset((self.me, spiffe_id)) not in self.twin.cut
        ]

    async def report(
        self,
        services: Collection[str],
        links: Mapping[str, float | None],
        circuits: int,
        standby: Mapping[str, int],
    ) -> MeshAnswer:
        graph = self.twin.graph
        routes = graph.report(self.me, services, links, time.time(), circuits, standby=standby)
        return MeshAnswer(
            [MeshRoute(r.service, r.via, r.cost) for r in routes],
            graph.strategies_for(services),
            graph.version,
            self.me in graph.policy.no_transit,
        )

    async def watch(self, after: int) -> int:
        for _ in range(20):  # a short long-poll: the twin has no push to wait on
            if self.twin.graph.version != after:
                break
            await asyncio.sleep(0.05)
        return self.twin.graph.version


@contextlib.asynccontextmanager
async def meshed(
    network: LocalNetwork, names: list[str]
) -> AsyncIterator[tuple[list[Peers], TwinController]]:
    """Routers `names`, each with its mesh shell, all linked once the block starts."""
    twin = TwinController()
    async with contextlib.AsyncExitStack() as stack:
        routers = []
        for name in names:
            identity = network.identity(name, kind="router")
            router = await stack.enter_async_context(Router(RouterConfig(identity, port=0)))
            twin.addresses[identity.spiffe_id] = router.address
            routers.append(router)
        shells = []
        for router in routers:
            control = twin.control(router.identity.spiffe_id)
            shell = Peers(router, control, interval=0.5, backoff=(0.05, 0.5))
            shells.append(await stack.enter_async_context(shell))
        await until(lambda: all(len(r.router_links()) == len(names) - 1 for r in routers))
        yield shells, twin


async def until(check: Callable[[], bool]) -> None:
    """Poll `check` until it holds; AssertionError after BOUND seconds."""
    deadline = asyncio.get_running_loop().time() + BOUND
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
