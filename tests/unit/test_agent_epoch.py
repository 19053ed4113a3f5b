"""The agent follows the controller by its events: a new epoch (a policy change, a deleted
service, a disabled identity) reaches the agent's listeners at once, not at the safety poll,
and every refresh goes through one long-lived controller client."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tests.conftest import context
from umbranet.agent.config import AgentConfig
from umbranet.agent.runner import Agent
from umbranet.client.models import MeInfo, ServiceAccess
from umbranet.pki import IdentityFile
from umbranet.testing import LocalNetwork
from umbranet.testing.waiting import eventually


@dataclasses.dataclass
class Controller:
    """What `GET /v1/me` answers, changed by the test; counts clients made and calls."""

    services: list[ServiceAccess]
    clients: int = 0
    me_calls: int = 0

    def client(self, identity: IdentityFile) -> FakeClient:
        self.clients += 1
        return FakeClient(self, identity)


class FakeClient:
    def __init__(self, controller: Controller, identity: IdentityFile) -> None:
        self.controller = controller
        self.identity = identity

    async def me(self) -> MeInfo:
        self.controller.me_calls += 1
        return MeInfo(
            name=self.identity.name,
            kind="device",
            spiffe_id=self.identity.spiffe_id,
            attributes=["client"],
            services=list(self.controller.services),
        )

    async def routers(self) -> list[Any]:
        return []

    async def aclose(self) -> None:
        return None


def test_an_epoch_change_reaches_the_agent_without_waiting_for_the_poll(
    tmp_path: Path, arun: Any
) -> None:
    network = LocalNetwork()
    ctx = context(network, "alice", "client")
    controller = Controller([ServiceAccess(name="db", actions=["dial"])])
    # The safety poll is far beyond the test's bounded waits: only the event can do it.
    config = AgentConfig(
        identity=tmp_path / "unused.json", state_dir=tmp_path / "state", refresh_interval=300
    )

    async def main() -> None:
        async with Agent(config, context=ctx, controller=controller.client) as agent:
            assert set(agent.interceptor.listeners) == {"db"}
            controller.services = []  # the service is deleted: the controller bumps the epoch
            network.bump()
            await eventually(lambda: not agent.interceptor.listeners, within=10)
            assert agent.counters.get("epoch_refresh") >= 1
            assert controller.me_calls == 2  # at start, and once for the epoch
            assert controller.clients == 1  # one client for both refreshes

    arun(main())
