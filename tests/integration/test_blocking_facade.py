"""The blocking facade (`umbranet.sdk.blocking`) from a plain thread: bulk data that must wait
for credit, half-close, a host that speaks first, a reset surfacing as `StreamReset`, and read
timeouts (also through the requests adapter and the sync httpx transport)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path

import httpx
import requests

from tests.conftest import context, echo_forever, running_router
from umbranet.integrations import UmbraSyncTransport
from umbranet.integrations.requests_adapter import UmbraAdapter
from umbranet.sdk import Context, Listener, StreamReset
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

    async def host_side(listener: Listener) -> None:
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
            listener = await host.listen("echo").start()  # bound before the client dials
            task = asyncio.get_running_loop().create_task(host_side(listener))
            try:
                return await asyncio.to_thread(client_side, asyncio.get_running_loop())
            finally:
                task.cancel()

    greeting, reset = arun(main())
    assert greeting == b"hello first\n"
    assert reset is not None and reset.code == "cancelled"
    assert "the host gave up" in reset.reason


def test_recv_times_out_without_losing_what_comes_later(
    network: LocalNetwork, arun, tmp_path
) -> None:
    path = _save(network, tmp_path, "carol", "client")

    def client_side() -> tuple[int, bytes]:
        with _client(path, network) as ctx, ctx.dial("echo") as stream:
            timeouts = 0
            for _ in range(3):  # nothing was sent yet: each wait times out
                try:
                    stream.recv(100, timeout=0.05)
                except TimeoutError:
                    timeouts += 1
            stream.settimeout(10)
            stream.sendall(b"after the timeouts")
            return timeouts, stream.readexactly(len(b"after the timeouts"))

    async def main() -> tuple[int, bytes]:
        async with running_router(network), context(network, "host", "server") as host:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            try:
                return await asyncio.to_thread(client_side)
            finally:
                server.cancel()

    timeouts, echoed = arun(main())
    assert timeouts == 3
    assert echoed == b"after the timeouts"


def test_sync_http_clients_get_read_timeouts(network: LocalNetwork, arun, tmp_path) -> None:
    path = _save(network, tmp_path, "dave", "client")

    async def silent_host(host_ctx: Context, ready: asyncio.Event) -> None:
        listener = await host_ctx.listen("echo").start()
        ready.set()
        streams = []
        while True:  # accept, read the request, never answer
            stream = await listener.accept()
            streams.append(stream)

    def client_side() -> tuple[str, str]:
        with _client(path, network) as ctx:
            with requests.Session() as session:
                session.mount("http://", UmbraAdapter(ctx))
                try:
                    session.get("http://echo.umbra/", timeout=(5, 0.2))
                    via_requests = "answered"
                except requests.ReadTimeout:
                    via_requests = "read timeout"
            with httpx.Client(transport=UmbraSyncTransport(ctx), timeout=0.2) as client:
                try:
                    client.get("http://echo.umbra/")
                    via_httpx = "answered"
                except httpx.ReadTimeout:
                    via_httpx = "read timeout"
            return via_requests, via_httpx

    async def main() -> tuple[str, str]:
        async with running_router(network), context(network, "host", "server") as host:
            ready = asyncio.Event()
            task = asyncio.get_running_loop().create_task(silent_host(host, ready))
            await ready.wait()
            try:
                return await asyncio.to_thread(client_side)
            finally:
                task.cancel()

    assert arun(main()) == ("read timeout", "read timeout")
