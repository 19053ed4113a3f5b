"""WebSocket frames (RFC 6455 section 5) for apps served dark; no IO.

`FrameReader` turns the bytes a client sends into whole messages and control frames;
`encode` frames what the server sends. Only what a server needs: no extensions (a set RSV bit
is a protocol error), client frames must be masked, server frames are not.

Frame layout (network byte order)::

     0               1               2               3
    +-+-+-+-+-------+-+-------------+-------------------------------+
    |F|R|R|R| opcode|M| payload len |    extended payload length    |
    |I|S|S|S|  (4)  |A|     (7)     |   (16 if len == 126, 64 if    |
    |N|V|V|V|       |S|             |          len == 127)          |
    +-+-+-+-+-------+-+-------------+-------------------------------+
    |  masking key (4, if MASK)     |          payload ...          |

Errors name the close code the server answers with: 1002 (protocol), 1007 (text that is
not UTF-8), 1009 (a message over the size limit).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Close",
    "FrameReader",
    "Message",
    "Ping",
    "WsProtocolError",
    "accept_key",
    "close_payload",
    "encode",
]

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA = (OP_TEXT, OP_BINARY)
_CONTROL = (OP_CLOSE, OP_PING, OP_PONG)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Close codes a peer may not send on the wire (RFC 6455 7.4.1) and the range it may.
_RESERVED_CODES = (1004, 1005, 1006, 1015)


class WsProtocolError(Exception):
    """The client broke the protocol; the server closes with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message: `text` for a text message, else `data`."""

    text: str | None = None
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int  # 1005 when the frame carried none
    reason: str


Event = Message | Ping | Close


def accept_key(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


def encode(opcode: int, payload: bytes = b"", mask: bytes | None = None) -> bytes:
    """One final frame; `mask` (4 bytes) only for client frames (tests, clients)."""
    length = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, mask_bit | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, length)
    if mask is None:
        return head + payload
    return head + mask + _unmask(payload, mask)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:120]


class FrameReader:
    """Feed it what the client sent; it returns the messages and control frames completed."""

    def __init__(self, max_message: int = 1 << 20) -> None:
        self.max_message = max_message
        self._buffer = bytearray()
        self._opcode: int | None = None  # of the fragmented message in progress
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[Event]:
        """Every event `data` completes; WsProtocolError at the first violation."""
        self._buffer += data
        events: list[Event] = []
        while (frame := self._next_frame()) is not None:
            event = self._handle(*frame)
            if event is not None:
                events.append(event)
        return events

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        if first & 0x70:
            raise WsProtocolError(1002, "reserved bits set (no extension was agreed)")
        if not second & 0x80:
            raise WsProtocolError(1002, "client frames must be masked")
        length, offset = second & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return None
            (length,) = struct.unpack_from("!H", buffer, 2)
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            (length,) = struct.unpack_from("!Q", buffer, 2)
            if length >> 63:
                raise WsProtocolError(1002, "payload length has its top bit set")
            offset = 10
        opcode, fin = first & 0x0F, bool(first & 0x80)
        if opcode in _CONTROL and (length > 125 or not fin):
            raise WsProtocolError(1002, "control frames are short and never fragmented")
        if self._size + length > self.max_message:
            raise WsProtocolError(1009, f"message over {self.max_message} bytes")
        end = offset + 4 + length
        if len(buffer) < end:
            return None
        mask = bytes(buffer[offset : offset + 4])
        payload = _unmask(bytes(buffer[offset + 4 : end]), mask)
        del buffer[:end]
        return fin, opcode, payload

    def _handle(self, fin: bool, opcode: int, payload: bytes) -> Event | None:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return None
        if opcode == OP_CLOSE:
            return _close(payload)
        if opcode in _DATA:
            if self._opcode is not None:
                raise WsProtocolError(1002, "a new message began inside a fragmented one")
            self._opcode = opcode
        elif opcode == OP_CONTINUATION:
            if self._opcode is None:
                raise WsProtocolError(1002, "a continuation frame with no message to continue")
        else:
            raise WsProtocolError(1002, f"reserved opcode {opcode:#x}")
        self._parts.append(payload)
        self._size += len(payload)
        if not fin:
            return None
        whole, kind = b"".join(self._parts), self._opcode
        self._opcode, self._parts, self._size = None, [], 0
        if kind == OP_BINARY:
            return Message(data=whole)
        try:
            return Message(text=whole.decode("utf-8"))
        except UnicodeDecodeError:
            raise WsProtocolError(1007, "a text message that is not UTF-8") from None


def _close(payload: bytes) -> Close:
    if not payload:
        return Close(1005, "")
    if len(payload) == 1:
        raise WsProtocolError(1002, "a close frame with a one-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if code < 1000 or code in _RESERVED_CODES or 1016 <= code < 3000 or code >= 5000:
        raise WsProtocolError(1002, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WsProtocolError(1007, "a close reason that is not UTF-8") from None
    return Close(code, reason)


def _unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the repeating 4-byte key (one big-integer XOR: fast for any size)."""
    if not payload:
        return payload
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    size = len(payload)
    value = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(size, "big")
