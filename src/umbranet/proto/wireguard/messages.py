"""WireGuard's four messages on the wire: layouts, sizes and parsers (whitepaper section 5.4).

All integers are little-endian. Every message starts with a type byte and three zero bytes.

    type 1  handshake initiation, 148 bytes
      0  type=1 | reserved(3)
      4  sender index (u32)
      8  unencrypted_ephemeral (32)
     40  encrypted_static (32 + 16 tag)
     88  encrypted_timestamp (12 TAI64N + 16 tag)
    116  mac1 (16)   = MAC(HASH("mac1----" || responder static), bytes 0..115)
    132  mac2 (16)   = MAC(cookie, bytes 0..131), or zeros when there is no fresh cookie

    type 2  handshake response, 92 bytes
      0  type=2 | reserved(3)
      4  sender index (u32)
      8  receiver index (u32)
     12  unencrypted_ephemeral (32)
     44  encrypted_nothing (0 + 16 tag)
     60  mac1 (16), 76 mac2 (16), computed as for type 1

    type 3  cookie reply, 64 bytes
      0  type=3 | reserved(3)
      4  receiver index (u32): the sender index of the message being answered
      8  nonce (24)
     32  encrypted_cookie (16 + 16 tag) = XAEAD(HASH("cookie--" || responder static), nonce,
         cookie, mac1 of the message being answered)

    type 4  transport data, 32 bytes or more (16 + padded packet + 16 tag)
      0  type=4 | reserved(3)
      4  receiver index (u32)
      8  counter (u64): the AEAD nonce, never reused under one key
     16  encrypted packet, zero-padded to a multiple of 16 bytes; empty = keepalive

Version history: 2026-12-04 first implementation, the protocol as published (no changes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "COOKIE_REPLY_LEN",
    "DATA_HEADER_LEN",
    "DATA_MIN_LEN",
    "INITIATION_LEN",
    "MAC1_OFFSET_INITIATION",
    "MAC1_OFFSET_RESPONSE",
    "RESPONSE_LEN",
    "TYPE_COOKIE_REPLY",
    "TYPE_DATA",
    "TYPE_INITIATION",
    "TYPE_RESPONSE",
    "CookieReply",
    "Initiation",
    "Response",
    "encode_cookie_reply",
    "encode_data_header",
    "encode_initiation_body",
    "encode_response_body",
    "message_type",
    "parse_cookie_reply",
    "parse_data_header",
    "parse_initiation",
    "parse_response",
]

TYPE_INITIATION = 1
TYPE_RESPONSE = 2
TYPE_COOKIE_REPLY = 3
TYPE_DATA = 4

INITIATION_LEN = 148
RESPONSE_LEN = 92
COOKIE_REPLY_LEN = 64
DATA_HEADER_LEN = 16
DATA_MIN_LEN = DATA_HEADER_LEN + 16  # a keepalive: header and the tag of nothing
MAC1_OFFSET_INITIATION = 116
MAC1_OFFSET_RESPONSE = 60

_INIT = struct.Struct("<I I 32s 48s 28s")  # type word, sender, ephemeral, static, timestamp
_RESP = struct.Struct("<I I I 32s 16s")  # type word, sender, receiver, ephemeral, empty
_COOKIE = struct.Struct("<I I 24s 32s")  # type word, receiver, nonce, encrypted cookie
_DATA = struct.Struct("<I I Q")  # type word, receiver, counter


@dataclass(frozen=True, slots=True)
class Initiation:
    """A parsed type-1 message (MACs are checked before this is built, on the raw bytes)."""

    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed type-2 message."""

    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes


@dataclass(frozen=True, slots=True)
class CookieReply:
    """A parsed type-3 message."""

    receiver: int
    nonce: bytes
    encrypted_cookie: bytes


def message_type(data: bytes) -> int | None:
    """The message type, or None unless the first word is a type 1-4 with zero reserved bytes."""
    if len(data) < 4:
        return None
    word = int.from_bytes(data[:4], "little")
    return word if 1 <= word <= 4 else None


def encode_initiation_body(
    sender: int, ephemeral: bytes, encrypted_static: bytes, encrypted_timestamp: bytes
) -> bytes:
    """Bytes 0..115 of an initiation (the MACs are appended by the cookie layer)."""
    return _INIT.pack(TYPE_INITIATION, sender, ephemeral, encrypted_static, encrypted_timestamp)


def parse_initiation(data: bytes) -> Initiation:
    """Parse a 148-byte initiation (the caller has checked length and type)."""
    _, sender, ephemeral, static, timestamp = _INIT.unpack_from(data)
    return Initiation(sender, ephemeral, static, timestamp)


def encode_response_body(
    sender: int, receiver: int, ephemeral: bytes, encrypted_nothing: bytes
) -> bytes:
    """Bytes 0..59 of a response."""
    return _RESP.pack(TYPE_RESPONSE, sender, receiver, ephemeral, encrypted_nothing)


def parse_response(data: bytes) -> Response:
    """Parse a 92-byte response."""
    _, sender, receiver, ephemeral, empty = _RESP.unpack_from(data)
    return Response(sender, receiver, ephemeral, empty)


def encode_cookie_reply(receiver: int, nonce: bytes, encrypted_cookie: bytes) -> bytes:
    """A whole 64-byte cookie reply."""
    return _COOKIE.pack(TYPE_COOKIE_REPLY, receiver, nonce, encrypted_cookie)


def parse_cookie_reply(data: bytes) -> CookieReply:
    """Parse a 64-byte cookie reply."""
    _, receiver, nonce, encrypted = _COOKIE.unpack_from(data)
    return CookieReply(receiver, nonce, encrypted)


def encode_data_header(receiver: int, counter: int) -> bytes:
    """The 16-byte header of a transport data message."""
    return _DATA.pack(TYPE_DATA, receiver, counter)


def parse_data_header(data: bytes) -> tuple[int, int]:
    """(receiver index, counter) of a transport data message."""
    _, receiver, counter = _DATA.unpack_from(data)
    return receiver, counter
