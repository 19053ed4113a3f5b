"""``umbra dial`` ends as soon as the far side closes the stream, even while stdin stays open
(a terminal nobody types into), instead of waiting for one more line of input."""

from __future__ import annotations

import asyncio
import io
import os
import threading

from tests.conftest import context, echo_forever, running_router
from umbranet.aio.runtime import run
from umbranet.cli.endpoint_cmd import pipe_stdio
from umbranet.testing import LocalNetwork


def test_dial_returns_when_the_far_side_closes_with_stdin_open(network: LocalNetwork) -> None:
    stdin_read, stdin_write = os.pipe()  # stays open: no EOF from our side
    out = io.BytesIO()

    async def main() -> None:
        async with running_router(network):
            host = context(network, "web", "server")
            client = context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()

                async def say_bye_and_close() -> None:
                    stream = await listener.accept()
                    stream.write(b"bye\n")
                    stream.close()

                server = asyncio.get_running_loop().create_task(say_bye_and_close())
                await pipe_stdio(await client.dial("echo"), stdin_read, out)
                await server
                await listener.close()

    finished = threading.Event()

    def command() -> None:
        run(main())  # like the CLI: the loop is closed (and its executor joined) at the end
        finished.set()

    threading.Thread(target=command, daemon=True).start()
    try:
        assert finished.wait(60), "dial kept running after the far side closed"
        assert out.getvalue() == b"bye\n"
    finally:
        os.close(stdin_write)
        os.close(stdin_read)


def test_dial_sends_stdin_and_half_closes_at_its_end(network: LocalNetwork, arun) -> None:
    stdin_read, stdin_write = os.pipe()
    os.write(stdin_write, b"hello through dial\n")
    os.close(stdin_write)
    out = io.BytesIO()

    async def main() -> None:
        async with running_router(network):
            host = context(network, "web", "server")
            client = context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                await pipe_stdio(await client.dial("echo"), stdin_read, out)
                server.cancel()
                await listener.close()

    try:
        arun(main())
    finally:
        os.close(stdin_read)
    assert out.getvalue() == b"hello through dial\n"
