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


def test_urllib_fetches_a_stdlib_http_server_hosted_dark(
    network: LocalNetwork, arun, tmp_path: Path
) -> None:
    """http.server on the listener bridge (no TCP port), fetched by unmodified urllib code."""
    import http.server
    import urllib.request

    path = tmp_path / "alice.json"
    network.identity("alice", attributes=("client",)).save(path)

    def client_side() -> bytes:
        with BlockingContext(path, control=network.control, renew=False) as ctx:
            monkeypatch(ctx)
            try:
                with urllib.request.urlopen("http://echo.umbra/hello", timeout=10) as reply:
                    return bytes(reply.read())
            finally:
                unpatch()

    async def main() -> bytes:
        async with running_router(network), context(network, "host", "server") as host:
            listener = await host.listen("echo").start()
            listener.as_socket()
            bridge = listener.socket_bridge

            class Handler(http.server.BaseHTTPRequestHandler):
                def do_GET(self) -> None:
                    peer = bridge.peer_of(self.connection)
                    body = f"{self.path} for {peer.spiffe_id if peer else '?'}".encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

                def log_message(self, *args: object) -> None:
                    pass

            server = http.server.HTTPServer(("", 0), Handler, bind_and_activate=False)
            server.socket = bridge.socket
            server.timeout = 30
            serving = asyncio.get_running_loop().run_in_executor(None, server.handle_request)
            try:
                return await asyncio.to_thread(client_side)
            finally:
                await serving
                await bridge.aclose()
                await listener.close()

    assert arun(main()) == b"/hello for spiffe://test.umbra/workload/alice"
