"""Socket bridges: code written for sockets (plain blocking sockets, asyncio streams over a
given socket, socket servers) works unchanged through the overlay, with a real router."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from typing import Any

import pytest

from tests.conftest import context, echo_forever, running_router
from umbranet.sdk.socket_bridge import ListenerBridge
from umbranet.testing import LocalNetwork

PAYLOAD = os.urandom(600_000)


def _blocking_exchange(sock: socket.socket, payload: bytes) -> bytes:
    """What a plain blocking client does: send all, half-close, read to EOF."""
    sock.settimeout(30)
    with sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        parts = []
        while chunk := sock.recv(65536):
            parts.append(chunk)
        return b"".join(parts)


async def _with_echo_host(network: LocalNetwork, body: Any) -> Any:
    async with running_router(network):
        host = context(network, "web", "server")
        client = context(network, "alice", "client")
        async with host, client:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            try:
                return await body(client)
            finally:
                server.cancel()
                await listener.close()


def test_a_plain_blocking_socket_round_trips_with_half_close(network, arun) -> None:
    async def body(client: Any) -> bytes:
        stream = await client.dial("echo")
        sock = stream.as_socket()
        return await asyncio.to_thread(_blocking_exchange, sock, PAYLOAD)

    echoed = arun(_with_echo_host(network, body))
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(PAYLOAD).digest()


def test_asyncio_open_connection_on_the_bridged_socket(network, arun) -> None:
    async def body(client: Any) -> bytes:
        stream = await client.dial("echo")
        reader, writer = await asyncio.open_connection(sock=stream.as_socket())
        writer.write(b"hello through a socket\n")
        line = await reader.readline()
        writer.write_eof()
        rest = await reader.read()
        writer.close()
        return line + rest

    assert arun(_with_echo_host(network, body)) == b"hello through a socket\n"


def test_peer_reset_ends_the_local_socket(network, arun) -> None:
    async def main() -> bytes:
        async with running_router(network):
            host = context(network, "web", "server")
            client = context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                stream = await client.dial("echo")
                incoming = await listener.accept()
                reader, _writer = await asyncio.open_connection(sock=stream.as_socket())
                incoming.abort("host gave up")
                try:
                    data = await asyncio.wait_for(reader.read(), 30)
                except ConnectionError:
                    data = b"<reset>"
                await listener.close()
                return data

    # Never data it could take for a reply: the connection ends empty (EOF or ECONNRESET).
    assert arun(main()) in (b"", b"<reset>")


def _blocking_server_once(bridge: ListenerBridge) -> tuple[str, bytes]:
    """A plain socket server: accept one connection, reply with the caller's identity."""
    bridge.socket.settimeout(30)
    conn, _ = bridge.socket.accept()
    with conn:
        conn.settimeout(30)
        request = b""
        while chunk := conn.recv(65536):
            request += chunk
        peer = bridge.peer_of(conn)
        conn.sendall(f"hello {peer.spiffe_id if peer else '?'}: ".encode() + request)
    return (peer.spiffe_id if peer else "?"), request


def test_a_blocking_socket_server_hosts_a_service_dark(network, arun) -> None:
    async def main() -> tuple[tuple[str, bytes], bytes, dict[str, int]]:
        async with running_router(network):
            host = context(network, "web", "server")
            client = context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                listener.as_socket()
                bridge = listener.socket_bridge
                server = asyncio.get_running_loop().run_in_executor(
                    None, _blocking_server_once, bridge
                )
                stream = await client.dial("echo")
                stream.write(b"ping")
                stream.write_eof()
                reply = await asyncio.wait_for(stream.read(), 30)
                seen = await server
                stats = bridge.statistics()
                await bridge.aclose()
                await listener.close()
                return seen, reply, stats

    seen, reply, stats = arun(main())
    assert seen == ("spiffe://test.umbra/workload/alice", b"ping")
    assert reply == b"hello spiffe://test.umbra/workload/alice: ping"
    assert stats["accepted"] == 1


def test_asyncio_server_on_the_bridged_listener(network, arun) -> None:
    async def main() -> list[bytes]:
        async with running_router(network):
            host = context(network, "web", "server")
            client = context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                async with ListenerBridge(listener) as bridge:

                    async def handle(reader: Any, writer: Any) -> None:
                        peer = bridge.peer_of(writer.get_extra_info("socket"))
                        writer.write(f"{peer.name if peer else '?'}:".encode())
                        writer.write(await reader.read())
                        writer.close()

                    server = await asyncio.start_unix_server(handle, sock=bridge.socket)
                    replies = []
                    for word in (b"one", b"two"):
                        stream = await client.dial("echo")
                        stream.write(word)
                        stream.write_eof()
                        replies.append(await asyncio.wait_for(stream.read(), 30))
                    server.close()
                await listener.close()
                return replies

    assert arun(main()) == [b"alice:one", b"alice:two"]


def test_a_local_server_that_is_gone_refuses_with_a_reason(network, arun) -> None:
    async def main() -> tuple[str, dict[str, int]]:
        async with running_router(network):
            host = context(network, "web", "server")
            client = context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                async with ListenerBridge(listener) as bridge:
                    bridge.socket.close()  # the app stopped serving
                    stream = await client.dial("echo")
                    with pytest.raises(ConnectionError) as info:
                        await asyncio.wait_for(stream.read(), 30)
                    stats = bridge.statistics()
                await listener.close()
                return str(info.value), stats

    reason, stats = arun(main())
    assert "local server refused" in reason
    assert stats["refused_bridge_connect_failed"] == 1
