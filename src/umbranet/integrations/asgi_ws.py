"""WebSockets for ASGI apps served dark: the ASGI ``websocket`` scope over one overlay stream.

An upgrade request (``GET`` with ``Upgrade: websocket``, version 13 and a key) reaches the app
as a ``websocket`` scope carrying the dialer's identity like an HTTP request does. Nothing is
switched until the app accepts: ``websocket.accept`` sends the 101 answer and from then on
the stream carries frames (`wsframe`); ``websocket.close`` before that answers 403 and the
connection ends. When the service has HTTP rules, the listener's gate has already judged the
upgrade request and opens the tunnel only on this 101 (`umbranet.sdk.http_gate`).

Pings are answered here; a client's close is echoed and reaches the app as
``websocket.disconnect`` with its code; a protocol violation closes with 1002/1007/1009 and
is counted (``ws_protocol_errors``).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import h11

from umbranet.integrations import wsframe

if TYPE_CHECKING:
    from umbranet.integrations.serving import _HttpConnection

__all__ = ["WebSocketSession", "is_websocket_request"]

log = logging.getLogger("umbranet.integrations")

Message = MutableMapping[str, Any]
_READ_SIZE = 65536


def is_websocket_request(request: h11.Request) -> bool:
    """A GET asking to upgrade to WebSocket (the session checks the rest of the handshake)."""
    if request.method != b"GET":
        return False
    for name, value in request.headers:
        if name == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


class WebSocketSession:
    """The ASGI ``receive``/``send`` pair of one WebSocket connection."""

    def __init__(self, connection: _HttpConnection, request: h11.Request) -> None:
        self.connection = connection
        self.request = request
        self.headers = {bytes(n): bytes(v) for n, v in request.headers}
        self.state = "connecting"  # -> open -> closed
        self.close_code = 1006
        self._reader = wsframe.FrameReader()
        self._pending: deque[Message] = deque()
        self._connect_sent = False

    @property
    def subprotocols(self) -> list[str]:
        offered = self.headers.get(b"sec-websocket-protocol", b"").decode("latin-1")
        return [p.strip() for p in offered.split(",") if p.strip()]

    def handshake_error(self) -> str | None:
        """Why the upgrade request is not a valid WebSocket opening handshake, if it is not."""
        if self.headers.get(b"sec-websocket-version") != b"13":
            return "Sec-WebSocket-Version must be 13"
        if not self.headers.get(b"sec-websocket-key"):
            return "Sec-WebSocket-Key is missing"
        if b"upgrade" not in self.headers.get(b"connection", b"").lower():
            return "Connection must include Upgrade"
        return None

    async def receive(self) -> Message:
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        while not self._pending:
            if self.state != "open":
                return {"type": "websocket.disconnect", "code": self.close_code}
            data = await self.connection.stream.read(_READ_SIZE)
            if not data:
                self.state = "closed"  # the client went away without a close frame
                return {"type": "websocket.disconnect", "code": 1006}
            await self._feed(data)
        return self._pending.popleft()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            await self._accept(message)
        elif kind == "websocket.send":
            if self.state != "open":
                raise RuntimeError(f"websocket.send on a {self.state} WebSocket")
            text = message.get("text")
            if text is not None:
                await self._write(wsframe.encode(wsframe.OP_TEXT, text.encode()))
            else:
                await self._write(wsframe.encode(wsframe.OP_BINARY, bytes(message["bytes"])))
        elif kind == "websocket.close":
            await self._close(int(message.get("code", 1000)), str(message.get("reason") or ""))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on a WebSocket")

    async def finish(self) -> None:
        """After the app returned: refuse if it never accepted, close if it left it open."""
        if self.state in ("connecting", "open"):
            await self._close(1000, "")

    # -- internals ------------------------------------------------------------------------

    async def _accept(self, message: Message) -> None:
        if self.state != "connecting":
            raise RuntimeError("websocket.accept sent twice")
        connection = self.connection
        # The request has no body; reading its end lets h11 switch protocols on our 101.
        while connection.h11.their_state is h11.SEND_BODY:
            await connection.next_event()
        headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", wsframe.accept_key(self.headers[b"sec-websocket-key"])),
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            headers.append((b"sec-websocket-protocol", subprotocol.encode()))
        headers += [(bytes(n), bytes(v)) for n, v in message.get("headers", [])]
        await connection.send(h11.InformationalResponse(status_code=101, headers=headers))
        self.state = "open"
        connection.server.count("websockets")
        leftover, _closed = connection.h11.trailing_data
        if leftover:
            await self._feed(bytes(leftover))

    async def _feed(self, data: bytes) -> None:
        try:
            events = self._reader.feed(data)
        except wsframe.WsProtocolError as exc:
            self.connection.server.count("ws_protocol_errors")
            log.info("service=%s websocket closed: %s", self.connection.server.service, exc)
            await self._close(exc.code, exc.reason)
            self._pending.append({"type": "websocket.disconnect", "code": exc.code})
            return
        for event in events:
            if isinstance(event, wsframe.Ping):
                await self._write(wsframe.encode(wsframe.OP_PONG, event.payload))
            elif isinstance(event, wsframe.Close):
                code = 1000 if event.code == 1005 else event.code
                await self._close(code, "")
                self._pending.append({"type": "websocket.disconnect", "code": event.code})
                return
            elif event.text is not None:
                self._pending.append({"type": "websocket.receive", "text": event.text})
            else:
                self._pending.append({"type": "websocket.receive", "bytes": event.data})

    async def _close(self, code: int, reason: str) -> None:
        if self.state == "connecting":
            self.state = "closed"
            await self.connection.reject(403, "websocket_refused", "the application refused")
            return
        if self.state == "open":
            self.state = "closed"
            self.close_code = code
            with contextlib.suppress(ConnectionError):
                payload = wsframe.close_payload(code, reason)
                await self._write(wsframe.encode(wsframe.OP_CLOSE, payload))

    async def _write(self, data: bytes) -> None:
        stream = self.connection.stream
        stream.write(data)
        await stream.drain()
