"""Later streams between the same dialer and host open inside their end-to-end session,
the first data riding with the open (issue 11, item 6): real TLS links on loopback, one
in-process router, the SDK on both ends."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import context, echo_forever, running_router
from umbranet.testing import LocalNetwork


def test_a_second_dial_opens_in_the_session_and_its_early_data_is_answered(
    network: LocalNetwork, arun: Any
) -> None:
    async def main() -> None:
        async with running_router(network, "r1"):
            host, client = context(network, "web", "server"), context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                first = await client.dial("echo")  # a full Noise handshake
                first.write(b"one")
                first.write_eof()
                assert await asyncio.wait_for(first.read(), 10) == b"one"

                second = await client.dial("echo", early_data=b"ping")
                assert await asyncio.wait_for(second.readexactly(4), 10) == b"ping"
                second.write(b" more")
                second.write_eof()
                assert await asyncio.wait_for(second.read(), 10) == b" more"
                assert second.peer.spiffe_id == first.peer.spiffe_id
                stats = host.statistics()["sessions"]
                assert stats["streams_opened_in_session"] == 1
                server.cancel()

    arun(main())


def test_a_host_that_forgot_the_session_makes_the_dial_fall_back_to_a_handshake(
    network: LocalNetwork, arun: Any
) -> None:
    async def main() -> None:
        async with running_router(network, "r1"):
            client = context(network, "alice", "client")
            async with client:
                for round_ in range(2):  # a new host process: it knows no session
                    host = context(network, "web", "server")
                    async with host:
                        listener = await host.listen("echo").start()
                        server = asyncio.get_running_loop().create_task(echo_forever(listener))
                        stream = await client.dial("echo", early_data=b"hello")
                        assert await asyncio.wait_for(stream.readexactly(5), 10) == b"hello"
                        stream.write_eof()
                        await asyncio.wait_for(stream.read(), 10)
                        refused = host.statistics()["sessions"].get("resume_refused", 0)
                        assert refused == round_  # the second host refused the open once
                        server.cancel()
                        await listener.close()
                        await stream.wait_closed()

    arun(main())
