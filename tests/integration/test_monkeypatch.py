"""Unmodified socket code reaches dark services once patched: blocking sockets by ``NAME.umbra``
and by configured host:port, asyncio by name, and a stdlib ``http.server`` hosted dark through
a patched ``bind`` (no TCP listener on the host) and fetched through the overlay by urllib."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import urllib.request
from pathlib import Path

from tests.conftest import context, echo_forever, free_port, running_router
from umbranet.integrations import monkeypatch as mp
from umbranet.sdk.blocking import BlockingContext
from umbranet.testing import LocalNetwork


def _exchange(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    received = bytearray()
    while data := sock.recv(65536):
        received += data
    return bytes(received)


def _tcp_listeners(port: int) -> list[str]:
    """Rows of /proc/net/tcp{,6} in LISTEN state (0A) on `port`: what ``ss -ltn`` shows."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    rows.append(line.strip())
    return rows


def test_blocking_sockets_dial_by_name_and_by_pair(
    network: LocalNetwork, arun, tmp_path: Path
) -> None:
    path = tmp_path / "alice.json"
    network.identity("alice", attributes=("client",)).save(path)

    def client_side() -> list[object]:
        with BlockingContext(path, control=network.control, renew=False) as ctx:
            with mp.patched(ctx, dial={"db.internal:5432": "echo"}):
                with socket.create_connection(("echo.umbra", 7), timeout=10) as sock:
                    # What clients do to TCP sockets must work on the bridged one.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    peer = sock.getpeername()
                    by_name = _exchange(sock, b"by name")
                address = socket.getaddrinfo("db.internal", 5432)[0][4]
                with socket.socket() as sock:  # plain connect, blocking, no timeout
                    sock.connect(address)
                    by_pair = _exchange(sock, b"by pair")
                with socket.socket() as sock:
                    sock.settimeout(10)
                    assert sock.connect_ex(address) == 0
                    by_connect_ex = _exchange(sock, b"by connect_ex")
                stats = mp.statistics()
            return [by_name, by_pair, by_connect_ex, peer, stats["dialed"]]

    async def main() -> list[object]:
        async with running_router(network), context(network, "host", "server") as host:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            try:
                return await asyncio.to_thread(client_side)
            finally:
                server.cancel()

    by_name, by_pair, by_connect_ex, peer, dialed = arun(main())
    assert (by_name, by_pair, by_connect_ex) == (b"by name", b"by pair", b"by connect_ex")
    assert isinstance(peer, tuple) and peer[0].startswith("127.85.") and peer[1] == 7
    assert dialed == 3


def test_a_refused_dial_is_a_refused_connect(network: LocalNetwork, arun, tmp_path: Path) -> None:
    """No such service: ``connect`` raises ConnectionRefusedError, counted with its code."""
    path = tmp_path / "alice.json"
    network.identity("alice", attributes=("client",)).save(path)

    def client_side() -> dict[str, int]:
        with (
            BlockingContext(path, control=network.control, renew=False) as ctx,
            mp.patched(ctx),
        ):
            try:
                socket.create_connection(("nosuch.umbra", 80), timeout=10)
            except ConnectionRefusedError:
                return mp.statistics()
            raise AssertionError("a dial to a missing service connected")

    async def main() -> dict[str, int]:
        async with running_router(network):
            return await asyncio.to_thread(client_side)

    assert arun(main())["refused_dial_failed"] == 1


def test_asyncio_open_connection_by_name(network: LocalNetwork, arun, tmp_path: Path) -> None:
    """asyncio resolves in an executor thread and connects a non-blocking socket: both patched.

    The client runs on the stdlib selector loop (uvloop resolves and connects in C)."""
    path = tmp_path / "alice.json"
    network.identity("alice", attributes=("client",)).save(path)

    async def app() -> tuple[bytes, object, bytes, bytes]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("echo.umbra", 9000), 10)
        writer.write(b"asyncio by name")
        await writer.drain()
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 10)
        peer = writer.get_extra_info("peername")
        writer.close()
        await writer.wait_closed()
        # The lower seam libraries use: loop.getaddrinfo + loop.sock_connect.
        loop = asyncio.get_running_loop()
        family, kind, proto, _, address = (await loop.getaddrinfo("echo.umbra", 9001))[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, address), 10)
            await loop.sock_sendall(sock, b"sock_connect")
            sock.shutdown(socket.SHUT_WR)
            raw = b""
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 100), 10):
                raw += chunk
        # A non-blocking connect cannot wait for the dial: a refused one reads as EOF.
        reader, writer = await asyncio.open_connection("nosuch.umbra", 80)
        refused = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data, peer, raw, refused

    def client_side() -> tuple[bytes, object, bytes, bytes, dict[str, int]]:
        with (
            BlockingContext(path, control=network.control, renew=False) as ctx,
            mp.patched(ctx),
            asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as run,
        ):
            return (*run.run(app()), mp.statistics())

    async def main() -> tuple[bytes, object, bytes, bytes, dict[str, int]]:
        async with running_router(network), context(network, "host", "server") as host:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            try:
                return await asyncio.to_thread(client_side)
            finally:
                server.cancel()

    data, peer, raw, refused, stats = arun(main())
    assert data == b"asyncio by name"
    assert isinstance(peer, tuple) and peer[1] == 9000
    assert raw == b"sock_connect"
    assert refused == b"" and stats["refused_dial_failed"] == 1


def test_http_server_hosted_dark_by_a_patched_bind(
    network: LocalNetwork, arun, tmp_path: Path
) -> None:
    """``HTTPServer(("127.0.0.1", port))`` unchanged: no TCP listener exists on the host while
    it serves, urllib fetches it through the overlay, and the handler learns the peer."""
    network.service("web", dial=("client",), bind=("server",))
    host_path = tmp_path / "web-host.json"
    network.identity("web-host", attributes=("server", "client")).save(host_path)
    port = free_port()  # free now; the patch never binds it, so nothing may listen there

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            peer = mp.peer_of(self.connection)
            body = f"{self.path} for {peer.spiffe_id if peer else '?'}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    def both_sides() -> tuple[bytes, list[str], list[str], dict[str, int]]:
        # One patch per process, so one identity both hosts `web` and fetches it.
        with BlockingContext(host_path, control=network.control, renew=False) as ctx:
            with mp.patched(ctx, host={f"127.0.0.1:{port}": "web"}):
                server = http.server.HTTPServer(("127.0.0.1", port), Handler)
                serving = threading.Thread(target=server.serve_forever, daemon=True)
                serving.start()
                try:
                    listeners = _tcp_listeners(port)
                    with urllib.request.urlopen("http://web.umbra/hello", timeout=10) as reply:
                        body = bytes(reply.read())
                finally:
                    server.shutdown()
                    server.server_close()
                    serving.join(10)
                stats = mp.statistics()
            return body, listeners, _tcp_listeners(port), stats

    async def main() -> tuple[bytes, list[str], list[str], dict[str, int]]:
        async with running_router(network):
            return await asyncio.to_thread(both_sides)

    body, listening, after, stats = arun(main())
    assert body == b"/hello for spiffe://test.umbra/workload/web-host"
    assert listening == [] and after == []
    assert stats["hosting"] == 0  # closing the server unbound the service


_OTHER_PROCESS = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
try:
    sock.sendall(b"let me in")
    print(repr(sock.recv(100)))
except ConnectionResetError:
    print("reset")
"""


def test_a_native_door_admits_this_process_only(
    network: LocalNetwork, arun, tmp_path: Path
) -> None:
    """The door ``native=True`` opens is a loopback port: another process (same user, even) is
    cut off and counted; a C-level socket of this process is dialed through."""
    import _socket
    import subprocess
    import sys

    path = tmp_path / "alice.json"
    network.identity("alice", attributes=("client",)).save(path)

    def client_side() -> tuple[str, bytes, dict[str, int]]:
        with (
            BlockingContext(path, control=network.control, renew=False) as ctx,
            mp.patched(ctx, native=True),
        ):
            address, port = socket.getaddrinfo("echo.umbra", 7)[0][4]
            other = subprocess.run(
                [sys.executable, "-c", _OTHER_PROCESS, address, str(port)],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            # _socket.socket connects in C, as libpq does: the patch does not see it.
            sock = _socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect((address, port))
            sock.sendall(b"native")
            sock.shutdown(socket.SHUT_WR)
            echoed = b""
            while data := sock.recv(100):
                echoed += data
            sock.close()
            return other.stdout.strip(), echoed, mp.statistics()

    async def main() -> tuple[str, bytes, dict[str, int]]:
        async with running_router(network), context(network, "host", "server") as host:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            try:
                return await asyncio.to_thread(client_side)
            finally:
                server.cancel()

    other, echoed, stats = arun(main())
    assert other in ("b''", "reset")
    assert echoed == b"native"
    assert stats["refused_not_this_process"] == 1 and stats["dialed_native"] == 1


def test_asyncio_start_server_hosted_dark_and_dialed_by_name(
    network: LocalNetwork, arun, tmp_path: Path
) -> None:
    """``asyncio.start_server("127.0.0.1", port)`` on a hosted address serves the overlay (no
    TCP listener), and ``asyncio.open_connection("web.umbra", port)`` reaches it."""
    network.service("web", dial=("client",), bind=("server",))
    path = tmp_path / "web-host.json"
    network.identity("web-host", attributes=("server", "client")).save(path)
    port = free_port()

    async def app() -> tuple[bytes, list[str], object]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = mp.peer_of(writer.get_extra_info("socket"))
            name = peer.spiffe_id.encode() if peer else b"?"
            writer.write(await reader.read() + b" from " + name)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            listeners = _tcp_listeners(port)
            sockname = server.sockets[0].getsockname()
            reader, writer = await asyncio.open_connection("web.umbra", port)
            writer.write(b"hello")
            writer.write_eof()
            reply = await asyncio.wait_for(reader.read(), 10)
            writer.close()
        return reply, listeners, sockname

    def both_sides() -> tuple[bytes, list[str], object]:
        with (
            BlockingContext(path, control=network.control, renew=False) as ctx,
            mp.patched(ctx, host={f"127.0.0.1:{port}": "web"}),
            asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as run,
        ):
            return run.run(app())

    async def main() -> tuple[bytes, list[str], object]:
        async with running_router(network):
            return await asyncio.to_thread(both_sides)

    reply, listeners, sockname = arun(main())
    assert reply == b"hello from spiffe://test.umbra/workload/web-host"
    assert listeners == []
    assert sockname == ("127.0.0.1", port)


def test_hosting_a_service_the_identity_may_not_bind_fails_listen(
    network: LocalNetwork, arun, tmp_path: Path
) -> None:
    """The policy says no: ``listen`` raises PermissionError and nothing was bound anywhere."""
    path = tmp_path / "alice.json"
    network.identity("alice", attributes=("client",)).save(path)
    port = free_port()

    def client_side() -> tuple[str, list[str], dict[str, int]]:
        with (
            BlockingContext(path, control=network.control, renew=False) as ctx,
            mp.patched(ctx, host={f"*:{port}": "echo"}),
            socket.socket() as sock,
        ):
            sock.bind(("0.0.0.0", port))
            try:
                sock.listen()
            except PermissionError as refused:
                return str(refused), _tcp_listeners(port), mp.statistics()
            raise AssertionError("a client identity hosted a service")

    async def main() -> tuple[str, list[str], dict[str, int]]:
        async with running_router(network):
            return await asyncio.to_thread(client_side)

    message, listeners, stats = arun(main())
    assert "cannot host echo" in message
    assert listeners == [] and stats["refused_host_failed"] == 1
