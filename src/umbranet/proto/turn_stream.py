"""TURN messages over a byte stream (TCP or TLS to the TURN server), sans-IO.

Where UDP to the TURN server is blocked (a firewall that drops all UDP, a corporate network
that lets only 443/tcp out), the client can still allocate a UDP relay by talking to the
server over TCP or TLS (RFC 8656 §3.1, earlier RFC 5766 §2.1; the relay towards peers
stays UDP, so peers see no difference). On a stream the messages lose their datagram
boundaries; each one says its own length, so the stream is cut back into messages here:

    STUN message      0b00 type (2) | length (2) | magic cookie (4) | transaction id (12)
                      then `length` bytes of attributes (a multiple of 4)
    ChannelData       0b01 channel (2, 0x4000-0x7FFF) | length (2) | data,
                      padded with zeros to a multiple of 4 bytes on a stream (RFC 8656 §12.5)

The first two bits tell the two apart; 0b10 and 0b11 start nothing a TURN server sends,
so a stream that shows one (or a STUN length that is not a multiple of 4, or a message past
`max_message`) is out of step for good: there is no resynchronising a byte stream. That is
a verdict (`broken`, with its reason), counted; the shell closes the connection and the
client allocates anew.

A message is handed on with ChannelData's padding removed, so the client's datagram
parser (`TurnClient.handle_datagram`) reads it as it would a UDP datagram.

Version history: 2026-12-04 first version (TCP and TLS to coturn).
"""

from __future__ import annotations

import struct
from collections import Counter, deque

__all__ = ["DEFAULT_MAX_MESSAGE", "StreamDeframer", "pad_channel_data"]

DEFAULT_MAX_MESSAGE = 65535 + 20  # a UDP-sized payload plus the largest header
_MAGIC = b"\x21\x12\xa4\x42"


def pad_channel_data(message: bytes) -> bytes:
    """ChannelData as it must travel on a stream: zero-padded to a multiple of 4 bytes."""
    return message + b"\0" * (-len(message) % 4)


class StreamDeframer:
    """Bytes in (`feed`), whole messages out (`poll_message`); `broken` once out of step."""

    def __init__(self, *, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._max = max_message
        self._buffer = bytearray()
        self._messages: deque[bytes] = deque()
        self.broken: str | None = None
        self.counters: Counter[str] = Counter()

    def feed(self, data: bytes) -> None:
        if self.broken is not None:
            self.counters["bytes_after_broken"] += len(data)
            return
        self._buffer += data
        while self.broken is None:
            message = self._next()
            if message is None:
                return
            self._messages.append(message)

    def poll_message(self) -> bytes | None:
        return self._messages.popleft() if self._messages else None

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete (bounded by `max_message`)."""
        return len(self._buffer)

    def _next(self) -> bytes | None:
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        top = buffer[0] >> 6
        (length,) = struct.unpack_from("!H", buffer, 2)
        if top == 0b00:
            if length % 4:
                self._break("stun_length_not_aligned")
                return None
            whole = used = 20 + length
            if len(buffer) >= 8 and buffer[4:8] != _MAGIC:
                self._break("stun_bad_cookie")
                return None
            kind = "stun_messages"
        elif top == 0b01:
            whole = 4 + length
            used = whole + (-whole % 4)
            kind = "channel_data"
        else:
            self._break("unknown_first_bits")
            return None
        if used > self._max:
            self._break("message_too_large")
            return None
        if len(buffer) < used:
            return None
        message = bytes(buffer[:whole])
        del buffer[:used]
        self.counters[kind] += 1
        return message

    def _break(self, reason: str) -> None:
        self.broken = reason
        self.counters[f"broken_{reason}"] += 1
        self._buffer.clear()
