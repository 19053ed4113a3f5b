"""An unmodified client that calls ``socket.create_connection`` reaches a dark service through
the overlay once patched: by ``NAME.umbra`` and by a configured host:port, with half-close."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from tests.conftest import context, echo_forever, running_router
from umbranet.integrations.monkeypatch import monkeypatch, unpatch
from umbranet.sdk.blocking import BlockingContext
from umbranet.testing import LocalNetwork


def _exchange(address: tuple[str, int], payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while data := sock.recv(65536):
            received += data
        return bytes(received)


def test_patched_create_connection_dials_the_overlay(
    network: LocalNetwork, arun, tmp_path: Path
) -> None:
    path = tmp_path / "alice.json"
    network.identity("alice", attributes=("client",)).save(path)

    def client_side() -> tuple[bytes, bytes]:
        with BlockingContext(path, control=network.control, renew=False) as ctx:
            monkeypatch(ctx, dial={"db.internal:5432": "echo"})
            try:
                by_name = _exchange(("echo.umbra", 7), b"by name")
                by_pair = _exchange(("db.internal", 5432), b"by pair")
            finally:
                unpatch()
            return by_name, by_pair

    async def main() -> tuple[bytes, bytes]:
        async with running_router(network), context(network, "host", "server") as host:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            try:
                return await asyncio.to_thread(client_side)
            finally:
                server.cancel()

    assert arun(main()) == (b"by name", b"by pair")
