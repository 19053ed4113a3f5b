"""The loopback TURN bridge against a fake stream server: framing both ways, verdicts."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from umbranet.aio.turn_bridge import TurnBridge


async def _server(
    reply: bytes,
) -> tuple[asyncio.Server, int, asyncio.Queue[bytes]]:
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(65535)
        await got.put(data)
        writer.write(reply)
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, got


async def _recv(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_channel_data_is_padded_on_the_stream_and_unpadded_back(loop: str) -> None:
    """Also under uvloop, which the agent runs (its transports are not asyncio's classes)."""

    async def scenario() -> None:
        reply = struct.pack("!HH", 0x4001, 3) + b"abc" + b"\0"  # padded, as on a stream
        server, port, got = await _server(reply)
        bridge = await TurnBridge.open(("127.0.0.1", port))
        mine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        mine.bind(("127.0.0.1", 0))
        mine.setblocking(False)
        try:
            mine.sendto(struct.pack("!HH", 0x4000, 5) + b"hello", bridge.address)
            assert await asyncio.wait_for(got.get(), 5) == struct.pack(
                "!HH", 0x4000, 5
            ) + b"hello" + bytes(3)
            assert await _recv(mine) == struct.pack("!HH", 0x4001, 3) + b"abc"
        finally:
            bridge.close()
            mine.close()
            server.close()

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


def test_a_stream_out_of_step_closes_the_bridge_with_its_reason() -> None:
    async def scenario() -> None:
        server, port, _ = await _server(b"\xff" * 8)
        bridge = await TurnBridge.open(("127.0.0.1", port))
        mine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        mine.bind(("127.0.0.1", 0))
        try:
            mine.sendto(struct.pack("!HH", 0x4000, 0), bridge.address)
            await asyncio.wait_for(bridge.closed.wait(), 5)
            assert bridge.reason == "stream_unknown_first_bits"
            assert bridge.counters["refused_stream_unknown_first_bits"] == 1
            assert bridge.statistics()["closed"] == "stream_unknown_first_bits"
        finally:
            bridge.close()
            mine.close()
            server.close()

    asyncio.run(scenario())


def test_an_unreachable_server_is_an_oserror_for_the_caller() -> None:
    async def scenario() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
        with pytest.raises(OSError):
            await TurnBridge.open(("127.0.0.1", port), timeout=5)

    asyncio.run(scenario())
