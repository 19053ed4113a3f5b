"""The blocking facade (`umbranet.sdk.blocking`) from a plain thread: bulk data that must wait
for credit, half-close, a host that speaks first, and a reset surfacing as `StreamReset`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path

from tests.conftest import context, echo_forever, running_router
from umbranet.sdk import Context, StreamReset
from umbranet.sdk.blocking import BlockingContext
from umbranet.testing import LocalNetwork

BULK = os.urandom(20 << 20)  # far more than one window: sendall must wait for credit


def _client(path: Path, network: LocalNetwork) -> BlockingContext:
    return BlockingContext(path, control=network.control, renew=False)


def _save(network: LocalNetwork, tmp_path: Path, name: str, *attributes: str) -> Path:
    path = tmp_path / f"{name}.json"
    network.identity(name, attributes=attributes).save(path)
    return path


def test_bulk_echo_and_half_close_from_a_thread(network: LocalNetwork, arun, tmp_path) -> None:
    path = _save(network, tmp_path, "alice", "client")

    def client_side() -> tuple[str, bytes]:
        with _client(path, network) as ctx, ctx.dial("echo") as stream:

            def send_all() -> None:  # another thread: the echo needs us to read meanwhile
                for offset in range(0, len(BULK), 1 << 20):
                    stream.sendall(BULK[offset : offset + (1 << 20)])
                stream.shutdown_write()

            sender = threading.Thread(target=send_all)
            sender.start()
            received = bytearray()
            while data := stream.recv(1 << 16):
                received += data
            sender.join(timeout=60)
            return hashlib.sha256(received).hexdigest(), stream.recv(10)

    async def main() -> tuple[str, bytes]:
        async with running_router(network), context(network, "host", "server") as host:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            try:
                return await asyncio.to_thread(client_side)
            finally:
                server.cancel()

    digest, after_eof = arun(main())
    assert digest == hashlib.sha256(BULK).hexdigest()
    assert after_eof == b""


def test_a_host_that_speaks_first_and_then_resets(network: LocalNetwork, arun, tmp_path) -> None:
    path = _save(network, tmp_path, "bob", "client")
    greeted = asyncio.Event()

    async def host_side(host_ctx: Context) -> None:
        listener = await host_ctx.listen("echo").start()
        stream = await listener.accept()
        stream.write(b"hello first\n")
        await stream.drain()
        await greeted.wait()
        stream.abort("the host gave up")

    def client_side(loop: asyncio.AbstractEventLoop) -> tuple[bytes, StreamReset | None]:
        with _client(path, network) as ctx, ctx.dial("echo") as stream:
            greeting = stream.readexactly(len(b"hello first\n"))
            loop.call_soon_threadsafe(greeted.set)
            try:
                while stream.recv(100):
                    pass
            except StreamReset as exc:
                return greeting, exc
            return greeting, None

    async def main() -> tuple[bytes, StreamReset | None]:
        async with running_router(network), context(network, "host", "server") as host:
            task = asyncio.get_running_loop().create_task(host_side(host))
            try:
                return await asyncio.to_thread(client_side, asyncio.get_running_loop())
            finally:
                await task

    greeting, reset = arun(main())
    assert greeting == b"hello first\n"
    assert reset is not None and reset.code == "cancelled"
    assert "the host gave up" in reset.reason
