"""A FastAPI WebSocket endpoint served dark: the upgrade reaches the app with the dialer's
identity, frames flow both ways after its accept, a refusal is a 403, a close is echoed."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

from fastapi import FastAPI, WebSocket

from tests.conftest import context, running_router
from umbranet.integrations import AsgiServer, wsframe
from umbranet.sdk import Stream
from umbranet.testing import LocalNetwork

KEY = base64.b64encode(b"0123456789abcdef")
MASK = b"\x01\x02\x03\x04"


def _app() -> FastAPI:
    app = FastAPI()

    @app.websocket("/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="umbra.test")
        peer = websocket.scope["extensions"]["umbranet"]["peer"]["name"]
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(f"{peer}: {message['text']}")
            else:
                await websocket.send_bytes(message["bytes"][::-1])

    @app.websocket("/closed")
    async def closed(websocket: WebSocket) -> None:
        await websocket.close(code=1008)

    return app


def _upgrade(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: umbra.test, other\r\n"
        f"Sec-WebSocket-Key: {KEY.decode()}\r\n\r\n"
    ).encode()


async def _head(stream: Stream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await asyncio.wait_for(stream.read(4096), 20)
        assert chunk, data
        data += chunk
    return data


async def _server_frame(stream: Stream, buffered: bytearray) -> tuple[int, bytes]:
    """One unmasked frame from the server (short test frames: 7- or 16-bit lengths)."""
    while True:
        if len(buffered) >= 2:
            length, offset = buffered[1] & 0x7F, 2
            if length == 126 and len(buffered) >= 4:
                (length,) = struct.unpack_from("!H", buffered, 2)
                offset = 4
            if length != 126 and len(buffered) >= offset + length:
                opcode, payload = buffered[0] & 0x0F, bytes(buffered[offset : offset + length])
                del buffered[: offset + length]
                return opcode, payload
        chunk = await asyncio.wait_for(stream.read(65536), 20)
        assert chunk, "the server closed the stream mid-frame"
        buffered += chunk


def test_websocket_echo_with_the_dialers_identity(network: LocalNetwork, arun: Any) -> None:
    network.service("web", dial=("client",), bind=("server",))

    async def main() -> dict[str, Any]:
        async with running_router(network):
            host = context(network, "web-host", "server")
            alice = context(network, "alice", "client")
            async with host, alice, AsgiServer(host, "web", _app()) as server:
                stream = await alice.dial("web")
                stream.write(_upgrade("/echo") + wsframe.encode(wsframe.OP_TEXT, b"hi", MASK))
                head = await _head(stream)
                buffered = bytearray(head.split(b"\r\n\r\n", 1)[1])
                text = await _server_frame(stream, buffered)
                stream.write(wsframe.encode(wsframe.OP_BINARY, b"abc" * 100, MASK))
                stream.write(wsframe.encode(wsframe.OP_PING, b"p", MASK))
                binary = await _server_frame(stream, buffered)
                pong = await _server_frame(stream, buffered)
                stream.write(wsframe.encode(wsframe.OP_CLOSE, wsframe.close_payload(1000), MASK))
                close = await _server_frame(stream, buffered)
                eof = await asyncio.wait_for(stream.read(100), 20)

                refused = await alice.dial("web")
                refused.write(_upgrade("/closed"))
                refusal = await _head(refused)
                return {
                    "head": head.split(b"\r\n\r\n")[0].decode(),
                    "frames": [text, binary, pong, close],
                    "eof": eof,
                    "refusal": refusal.split(b"\r\n")[0],
                    "stats": server.statistics()["counters"],
                }

    result = arun(main())
    head = result["head"].lower()
    assert head.startswith("http/1.1 101 ")
    accept = wsframe.accept_key(KEY).decode().lower()
    assert f"sec-websocket-accept: {accept}" in head
    assert "sec-websocket-protocol: umbra.test" in head
    text, *middle, close = result["frames"]
    assert text == (wsframe.OP_TEXT, b"alice: hi")
    # The pong is answered as the ping is read, so it may overtake the app's echo.
    assert sorted(middle) == [(wsframe.OP_BINARY, (b"abc" * 100)[::-1]), (wsframe.OP_PONG, b"p")]
    assert close == (wsframe.OP_CLOSE, wsframe.close_payload(1000))
    assert result["eof"] == b""
    assert result["refusal"].startswith(b"HTTP/1.1 403")
    assert result["stats"]["websockets"] == 1


def test_a_broken_handshake_is_a_400(network: LocalNetwork, arun: Any) -> None:
    network.service("web", dial=("client",), bind=("server",))

    async def main() -> bytes:
        async with running_router(network):
            host = context(network, "web-host", "server")
            alice = context(network, "alice", "client")
            async with host, alice, AsgiServer(host, "web", _app()):
                stream = await alice.dial("web")
                stream.write(_upgrade("/echo").replace(b"Version: 13", b"Version: 8"))
                answer = b""
                while chunk := await asyncio.wait_for(stream.read(4096), 20):
                    answer += chunk
                return answer

    head = arun(main())
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Sec-WebSocket-Version must be 13" in head.split(b"\r\n\r\n", 1)[1]
