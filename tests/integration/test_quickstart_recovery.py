"""A quickstart network played with (demo client disabled, demo host's certificates revoked)
comes back on the next run instead of failing: the demo identities are made usable again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from umbranet.quickstart import Quickstart


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Quickstart]:
    messages: list[str] = []
    net = Quickstart(
        tmp_path / "qs", router_port=free_port(), controller_port=free_port(), say=messages.append
    )
    try:
        net.start_core()
        yield net
    finally:
        net.stop()


def test_demo_identities_come_back_after_disable_and_revoke(network: Quickstart) -> None:
    said: list[str] = []
    network.say = said.append

    async def play_then_rerun() -> tuple[bool, bool]:
        await network._enroll_demo()
        async with network.admin() as client:
            await client.disable_identity("demo-client")
            await client.revoke_certificates("demo-host")
        await network._enroll_demo()  # what the next `umbra quickstart` does
        async with network.admin() as client:
            demo_client = await client.get_identity("demo-client")
            demo_host = await client.get_identity("demo-host")
        return demo_client.enabled, demo_host.enrolled

    enabled, enrolled = asyncio.run(play_then_rerun())
    assert enabled and enrolled
    assert any("disabled in an earlier run" in m for m in said)
    assert any("certificates revoked" in m for m in said)
