"""The agent links to its best three routers by RTT out of five, not to all of them; dials go
through the best; when that router dies the agent links the next best in its place and dials
go on (issue 11, item 3). Real routers and TLS links on loopback, an in-memory controller.

Loopback RTTs are all alike, so the test fixes each router's figure in the context's ranking
(what the link keepalive would have measured); everything else is the real code."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from tests.conftest import context, echo_forever
from umbranet.agent.config import AgentConfig
from umbranet.agent.runner import Agent
from umbranet.client.models import MeInfo
from umbranet.pki import IdentityFile
from umbranet.router import Router, RouterConfig
from umbranet.testing import LocalNetwork
from umbranet.testing.waiting import eventually

BOUND = 20.0  # every wait below is bounded by this
RTT_MS = {"r1": 5.0, "r2": 1.0, "r3": 3.0, "r4": 2.0, "r5": 4.0}


@dataclasses.dataclass(frozen=True)
class RouterRow:
    name: str
    spiffe_id: str
    address: str


@dataclasses.dataclass
class Controller:
    """`GET /v1/me` (no services to intercept) and `GET /v1/routers`."""

    routers: list[RouterRow]

    def client(self, identity: IdentityFile) -> FakeClient:
        return FakeClient(self, identity)


class FakeClient:
    def __init__(self, controller: Controller, identity: IdentityFile) -> None:
        self.controller = controller
        self.identity = identity

    async def me(self) -> MeInfo:
        return MeInfo(
            name=self.identity.name,
            kind="device",
            spiffe_id=self.identity.spiffe_id,
            attributes=["client"],
            services=[],
        )

    async def routers(self) -> list[RouterRow]:
        return list(self.controller.routers)

    async def aclose(self) -> None:
        return None


def test_the_agent_keeps_links_to_its_three_best_routers_and_moves_when_one_dies(
    network: LocalNetwork, tmp_path: Path, arun: Any
) -> None:
    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            routers: dict[str, Router] = {}
            for name in RTT_MS:
                identity = network.identity(name, kind="router")
                router = await stack.enter_async_context(Router(RouterConfig(identity, port=0)))
                network.routers.append(router.address)
                routers[name] = router
            by_address = {r.address: name for name, r in routers.items()}
            host = await stack.enter_async_context(context(network, "web", "server"))
            listener = await host.listen("echo").start()  # bound at all five
            server = asyncio.get_running_loop().create_task(echo_forever(listener))

            ctx = context(network, "alice", "client")

            def fixed(address: str, connection: Any) -> float | None:
                if connection is None or not connection.live:
                    return None
                return RTT_MS[by_address[address]]

            ctx.ranking.rtt_ms = fixed  # type: ignore[method-assign]
            rows = [RouterRow(n, r.identity.spiffe_id, r.address) for n, r in routers.items()]
            config = AgentConfig(identity=tmp_path / "unused.json", state_dir=tmp_path / "state")
            agent = Agent(config, context=ctx, controller=Controller(rows).client)
            await stack.enter_async_context(agent)

            def linked() -> set[str]:
                live = ctx.statistics()["routers"]
                return {by_address[a] for a, up in live.items() if up}

            await eventually(lambda: linked() == {"r2", "r4", "r3"}, within=BOUND)
            assert agent.counters.get("router_released") == 2  # r1, r5: measured, let go
            # Every router was measured once (a probe link), and only three stay linked.
            assert set(agent.router_links.statistics()["rtt_ms"]) == set(network.routers)
            # The routers let go see only the host's link now: the agent's probe link closed.
            dropped = (routers["r1"], routers["r5"])
            await eventually(lambda: [_links(r) for r in dropped] == [1, 1], within=BOUND)
            ping = await asyncio.wait_for(agent.ping("echo"), BOUND)
            assert ping["router"] == "r2"  # the home router: the lowest RTT
            assert ctx.home_router() == routers["r2"].address

            await routers["r2"].stop()  # the home router dies
            await eventually(lambda: linked() == {"r4", "r3", "r5"}, within=BOUND)
            ping = await asyncio.wait_for(agent.ping("echo"), BOUND)
            assert ping["router"] == "r4"
            server.cancel()

    arun(main())


def _links(router: Router) -> int:
    return int(router.statistics()["links"])
