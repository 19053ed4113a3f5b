"""Connections whose packets carry a firewall mark (the agent's underlay links when an exit
node takes every unmarked packet into the tunnel). Setting SO_MARK needs CAP_NET_ADMIN, so
the marked cases run as root (CI) and skip elsewhere."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from umbranet.aio.marked import connect_marked, create_connection
from umbranet.client.transport import http_client, mark_controller_sockets

MARK = 0x756D
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not hasattr(socket, "SO_MARK"),
    reason="SO_MARK needs root (CAP_NET_ADMIN) on Linux",
)


class _Echoed(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.got.done():
            self.got.set_result(data)


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def _run(loop: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


async def _round_trip(mark: int | None) -> int:
    """The mark on a connection made with `mark`, after one echoed message."""
    server, port = await _echo_server()
    try:
        transport, protocol = await create_connection(
            _Echoed, "127.0.0.1", port, ssl=None, server_hostname=None, mark=mark
        )
        try:
            transport.write(b"ping")
            assert await asyncio.wait_for(protocol.got, 5) == b"ping"
            sock = transport.get_extra_info("socket")
            return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK))
        finally:
            transport.close()
    finally:
        server.close()


@needs_root
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_marked_connection_carries_the_mark_and_the_data(loop: str) -> None:
    """Also under uvloop, which the agent runs."""

    async def scenario() -> None:
        assert await _round_trip(MARK) == MARK

    _run(loop, scenario)


@needs_root
def test_a_refused_connection_raises_and_leaves_no_socket_open() -> None:
    async def scenario() -> None:
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(ConnectionRefusedError):
            await connect_marked("127.0.0.1", port, MARK)
        assert len(os.listdir("/proc/self/fd")) == before

    asyncio.run(scenario())


@pytest.mark.skipif(not hasattr(socket, "SO_MARK"), reason="SO_MARK is Linux only")
def test_without_a_mark_the_connection_is_a_plain_one() -> None:
    async def scenario() -> None:
        assert await _round_trip(None) == 0

    asyncio.run(scenario())


async def _controller_socket_mark(mark: int | None) -> int:
    """The mark on the socket a controller client's request went over, with `mark` set."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.read()  # the connection stays up until the client is done with it
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mark_controller_sockets(mark)
    try:
        async with http_client(f"http://127.0.0.1:{port}", False, 5.0, None) as http:
            async with http.stream("GET", "/v1/me") as response:
                sock = response.extensions["network_stream"].get_extra_info("socket")
                mark_seen = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK))
                assert await response.aread() == b"{}"
            return mark_seen
    finally:
        mark_controller_sockets(None)
        server.close()
        await server.wait_closed()


@needs_root
def test_controller_clients_mark_their_sockets_once_asked() -> None:
    """With an exit node, the agent's controller clients (to any replica) skip the tunnel."""
    assert asyncio.run(_controller_socket_mark(MARK)) == MARK


def test_controller_clients_leave_sockets_unmarked_by_default() -> None:
    assert asyncio.run(_controller_socket_mark(None)) == 0
