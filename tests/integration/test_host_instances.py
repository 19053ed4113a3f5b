"""Two host processes (two SDK contexts) of one workload identity serve one service at one
router: a client's later streams open inside its session with one of them, and each reaches
that process, whatever the router's strategy (issue 11, items 4 and 6). Real TLS links on
loopback, one in-process router, the SDK on every end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import context, echo_forever, running_router
from umbranet.sdk import Context
from umbranet.testing import LocalNetwork

STREAMS = 20


async def _echo_once(client: Context, data: bytes) -> None:
    stream = await client.dial("echo")
    stream.write(data)
    stream.write_eof()
    assert await asyncio.wait_for(stream.read(), 10) == data


@pytest.mark.parametrize("strategy", ["random", "smart"])
def test_in_session_streams_reach_the_process_holding_the_session(
    network: LocalNetwork, arun: Any, strategy: str
) -> None:
    async def main() -> None:
        async with running_router(network, "r1") as router:
            router.switch.terminators.set_strategies({"echo": strategy})
            web = network.identity("web", attributes=("server",))
            hosts = [Context(web, control=network.control, renew=False) for _ in range(2)]
            client = context(network, "alice", "client")
            async with hosts[0], hosts[1], client:
                assert hosts[0].statistics()["instance"] != hosts[1].statistics()["instance"]
                servers = []
                for host in hosts:
                    listener = await host.listen("echo").start()
                    servers.append(asyncio.get_running_loop().create_task(echo_forever(listener)))
                try:
                    for i in range(STREAMS):
                        await _echo_once(client, f"stream {i}".encode())
                finally:
                    for server in servers:
                        server.cancel()
                assert client.statistics()["counters"].get("open_refused", 0) == 0
                opened = [
                    host.statistics()["sessions"].get("streams_opened_in_session", 0)
                    for host in hosts
                ]
                # The first stream made the session (a handshake); all later ones opened
                # in it, at the one process that holds it.
                assert sorted(opened) == [0, STREAMS - 1]
                refused = [h.statistics()["sessions"].get("resume_refused", 0) for h in hosts]
                assert refused == [0, 0]

    arun(main())
