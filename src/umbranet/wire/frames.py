"""Link frames: the 12-byte header, frame types and an incremental zero-copy decoder.

Every link (endpoint <-> router, later router <-> router) is one mutual-TLS byte stream
carrying frames:

     0               1               2               3
     0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
    +---------------+---------------+-------------------------------+
    |  frame type   |     flags     |        reserved (zero)        |
    +---------------+---------------+-------------------------------+
    |                     circuit id (u32, BE)                      |
    +---------------------------------------------------------------+
    |                   payload length (u32, BE)                    |
    +---------------------------------------------------------------+
    |                 payload (0 .. MAX_PAYLOAD bytes)              |

Circuit 0 is the link itself (HELLO, PING, PONG, GOAWAY). Circuit ids are chosen by the side
that opens the circuit: the TLS client side uses odd ids, the TLS server side even ids, so
the two never collide on one link. Binding ids (BIND, BIND_OK, BIND_ERR, UNBIND, CONNECT)
live in their own space, chosen by the endpoint that binds.

The decoder hands out payloads as memoryviews into its receive buffer: they are valid only
until the next call to `get_buffer`/`feed`, so consumers copy or decrypt them at once.
Version history: see `docs/wire.md`.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag

from umbranet.wire.codes import ErrorCode

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!BBHII")
HEADER_SIZE = HEADER.size
# 64 KiB of application data plus the 16-byte AEAD tag: the largest DATA frame.
MAX_DATA_PAYLOAD = 65536 + 16
# Control frames carry tickets and handshake messages; nothing legitimate comes near this.
MAX_PAYLOAD = 256 * 1024
# A host instance id (BIND, ACCEPT and in-session DIAL `instance`): a routing hint naming
# one host process; 16 hex digits from the SDK, up to this many characters accepted.
MAX_INSTANCE = 64


class FrameType(IntEnum):
    """What a frame means. Numbers are stable on the wire."""

    HELLO = 0x01  # circuit 0: control payload {"v": version, "role": ...}; first frame each way
    PING = 0x02  # circuit 0: 8 opaque bytes, answered by PONG with the same bytes
    PONG = 0x03
    GOAWAY = 0x04  # circuit 0: control payload {"code", "reason"}; the sender closes the link

    BIND = 0x10  # binding id: {"ticket", "service"}; repeated with a fresh ticket to renew it
    BIND_OK = 0x11  # binding id: {"expires_at"}
    BIND_ERR = 0x12  # binding id: {"code", "reason"}
    UNBIND = 0x13  # binding id: empty

    DIAL = 0x20  # circuit: {"ticket", "service", "window"} + Noise message 1 as the blob
    CONNECT = 0x21  # circuit: {"service", "binding", "ticket", "window"} + Noise message 1
    ACCEPT = 0x22  # circuit: {"window"} + Noise message 2
    HANDSHAKE = 0x23  # circuit: Noise message 3 (dialer -> host), opaque to routers
    DATA = 0x24  # circuit: AEAD-sealed bytes; flag FIN ends this direction
    CREDIT = 0x25  # circuit: u32 BE, bytes the receiver frees for the sender
    RESET = 0x26  # circuit: {"code", "reason"}; ends the circuit in both directions

    # Network mode's relay (DERP-like), all on circuit 0 of an endpoint's link:
    WG_RELAY_ALLOW = 0x30  # {"ticket"}: a relay ticket for one destination key; repeat to renew
    WG_DATAGRAM = 0x31  # 32-byte public key + one sealed WireGuard datagram (see WG_KEY_SIZE)
    WG_RELAY_ERR = 0x32  # {"code", "reason", "peer"}: a relay ticket or datagram refused


class Flag(IntFlag):
    """DATA frame flags, all bound into the AEAD associated data: no router can forge one.

    FIN ends the sender's direction. KEY_PHASE flips on the first frame sealed under the
    sender's next key (rekey, see `umbranet.proto.e2e`). ABORT carries a sealed error
    `{"code", "reason"}`: the peer's authenticated abort of the whole circuit.
    """

    NONE = 0
    FIN = 0x01
    KEY_PHASE = 0x02
    ABORT = 0x04


# WG_DATAGRAM: towards the router the key names the destination, from the router the source.
WG_KEY_SIZE = 32
# The largest WireGuard datagram relayed: a 65,535-byte IP packet sealed (32 bytes of header
# and tag) would not fit a UDP datagram anyway, so nothing honest is refused by this.
MAX_WG_DATAGRAM = 65535

CIRCUIT_FRAMES = frozenset(
    {
        FrameType.DIAL,
        FrameType.CONNECT,
        FrameType.ACCEPT,
        FrameType.HANDSHAKE,
        FrameType.DATA,
        FrameType.CREDIT,
        FrameType.RESET,
    }
)
_KNOWN_TYPES = frozenset(int(t) for t in FrameType)


class WireError(Exception):
    """The peer sent bytes that are not a valid frame stream; the link must close."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.code}: {reason}")
        self.code = code
        self.reason = reason


class Frame:
    """One decoded frame. `payload` may be a view into the decoder's buffer (see module doc)."""

    __slots__ = ("circuit", "flags", "payload", "type")

    def __init__(self, type: int, flags: int, circuit: int, payload: memoryview | bytes) -> None:
        self.type = type
        self.flags = flags
        self.circuit = circuit
        self.payload = payload

    def __repr__(self) -> str:
        name = FrameType(self.type).name if self.type in _KNOWN_TYPES else hex(self.type)
        return f"Frame({name}, flags={self.flags}, circuit={self.circuit}, len={len(self.payload)})"


def encode_header(type: int, circuit: int, length: int, flags: int = 0) -> bytes:
    """The 12 header bytes for a payload of `length` bytes."""
    return HEADER.pack(type, flags, 0, circuit, length)


def encode_frame(type: int, circuit: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """A whole frame as one bytes object (control frames; DATA uses header + payload writes)."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(type, flags, 0, circuit, len(payload)) + payload


class FrameDecoder:
    """Incremental frame parser that owns its receive buffer (for asyncio.BufferedProtocol).

    Use `get_buffer()` + `buffer_updated(n)` from a BufferedProtocol, or `feed(data)` anywhere
    else. A frame longer than `max_payload`, an unknown type or non-zero reserved bits raise
    WireError: after that the stream is unusable and the link must be closed.
    """

    __slots__ = ("_buf", "_end", "_max_payload", "_start", "_view")

    MIN_FREE = 64 * 1024

    def __init__(self, max_payload: int = MAX_PAYLOAD, buffer_size: int = 256 * 1024) -> None:
        self._max_payload = max_payload
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return self._end - self._start

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Free space to receive into; previously returned payload views become invalid."""
        pending = self._end - self._start
        if pending == 0:
            self._start = self._end = 0
        elif len(self._buf) - self._end < self.MIN_FREE:
            needed = pending + self.MIN_FREE
            if needed <= len(self._buf):
                # Copy first: the source and target ranges may overlap.
                self._buf[0:pending] = bytes(self._view[self._start : self._end])
            else:
                # Never resize in place: old payload views may still export the old buffer.
                fresh = bytearray(max(needed, len(self._buf)))
                fresh[0:pending] = self._view[self._start : self._end]
                self._buf = fresh
                self._view = memoryview(fresh)
            self._start, self._end = 0, pending
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> list[Frame]:
        """Account for `nbytes` written into the last buffer and return the complete frames."""
        self._end += nbytes
        frames: list[Frame] = []
        view = self._view
        start, end = self._start, self._end
        unpack = HEADER.unpack_from
        while end - start >= HEADER_SIZE:
            ftype, flags, reserved, circuit, length = unpack(view, start)
            if length > self._max_payload:
                raise WireError(
                    ErrorCode.FRAME_TOO_LARGE, f"frame of {length} bytes > {self._max_payload}"
                )
            if ftype not in _KNOWN_TYPES or reserved:
                raise WireError(ErrorCode.PROTOCOL_ERROR, f"unknown frame type {ftype:#x}")
            stop = start + HEADER_SIZE + length
            if stop > end:
                break
            frames.append(Frame(ftype, flags, circuit, view[start + HEADER_SIZE : stop]))
            start = stop
        self._start = start
        return frames

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Parse `data`; convenient for tests and non-buffered transports."""
        frames: list[Frame] = []
        data = memoryview(data)
        while data:
            # Frames from earlier chunks stay valid: copy them out before `get_buffer` may
            # move the bytes their views point at.
            if frames:
                frames = [Frame(f.type, f.flags, f.circuit, bytes(f.payload)) for f in frames]
            buf = self.get_buffer(len(data))
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            data = data[n:]
            frames.extend(self.buffer_updated(n))
        return frames
