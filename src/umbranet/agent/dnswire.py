"""DNS messages (RFC 1035) as bytes and back: just enough for the agent's stub resolver.

Sans-IO and strict: `parse_message` turns any byte string into a `Message` or raises
`DnsError(code, reason)`, never anything else, because the stub reads packets from whoever
can reach it. Names may be compressed (pointers); a pointer must point strictly backwards,
so a crafted loop cannot make the parser spin, and a name is at most 255 bytes.

Layout of a message (all integers big-endian)::

    +--+--+--+--+--+--+--+--+--+--+--+--+
    |  id | flags | qd | an | ns | ar   |   header, 12 bytes, 2 bytes each
    +--+--+--+--+--+--+--+--+--+--+--+--+
    | question: name, type(2), class(2)  |   x qd
    | record: name, type(2), class(2),   |   x (an + ns + ar)
    |   ttl(4), rdlength(2), rdata        |
    +------------------------------------+

    flags: QR(1) OPCODE(4) AA(1) TC(1) RD(1) RA(1) Z(3) RCODE(4)

The builders write names uncompressed (the stub's answers are small).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "CLASS_IN",
    "FORMERR",
    "NOERROR",
    "NOTIMP",
    "NXDOMAIN",
    "REFUSED",
    "SERVFAIL",
    "TYPE_A",
    "TYPE_AAAA",
    "DnsError",
    "Message",
    "Question",
    "Record",
    "a_record",
    "aaaa_record",
    "build_error_header",
    "build_message",
    "build_query",
    "build_response",
    "parse_message",
]

TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1

NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5

_QR = 0x8000
_AA = 0x0400
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080
_HEADER = struct.Struct("!HHHHHH")
_MAX_NAME = 255
_MAX_LABEL = 63
# More records than fit in a 64 KiB message is a lie; bound the work before trusting counts.
_MAX_RECORDS = 512


class DnsError(ValueError):
    """A message we cannot read or write: `code` for counters, `reason` for people."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Question:
    name: str
    qtype: int
    qclass: int = CLASS_IN


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    rtype: int
    rclass: int
    ttl: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed message; `flags` is the raw 16-bit field, the properties decode it."""

    id: int
    flags: int
    questions: tuple[Question, ...] = ()
    answers: tuple[Record, ...] = ()
    authorities: tuple[Record, ...] = ()
    additionals: tuple[Record, ...] = ()

    @property
    def is_response(self) -> bool:
        return bool(self.flags & _QR)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def recursion_desired(self) -> bool:
        return bool(self.flags & _RD)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & _TC)


def parse_message(data: bytes) -> Message:
    """Parse a whole message; DnsError for anything malformed, truncated or trailing."""
    if len(data) < _HEADER.size:
        raise DnsError("short_header", f"{len(data)} bytes, a header needs 12")
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if qd + an + ns + ar > _MAX_RECORDS:
        raise DnsError("too_many_records", f"{qd + an + ns + ar} entries claimed")
    offset = _HEADER.size
    questions = []
    for _ in range(qd):
        name, offset = _read_name(data, offset)
        if offset + 4 > len(data):
            raise DnsError("truncated", "question ends early")
        qtype, qclass = struct.unpack_from("!HH", data, offset)
        offset += 4
        questions.append(Question(name, qtype, qclass))
    sections: list[list[Record]] = [[], [], []]
    for section, count in zip(sections, (an, ns, ar), strict=True):
        for _ in range(count):
            record, offset = _read_record(data, offset)
            section.append(record)
    if offset != len(data):
        raise DnsError("trailing_bytes", f"{len(data) - offset} bytes after the last record")
    return Message(
        ident, flags, tuple(questions), tuple(sections[0]), tuple(sections[1]), tuple(sections[2])
    )


def build_message(message: Message) -> bytes:
    """Serialise `message` (names uncompressed); DnsError for names that cannot be encoded."""
    parts = [
        _HEADER.pack(
            message.id,
            message.flags,
            len(message.questions),
            len(message.answers),
            len(message.authorities),
            len(message.additionals),
        )
    ]
    for question in message.questions:
        parts.append(_encode_name(question.name))
        parts.append(struct.pack("!HH", question.qtype, question.qclass))
    for record in (*message.answers, *message.authorities, *message.additionals):
        if len(record.data) > 0xFFFF:
            raise DnsError("rdata_too_long", f"{len(record.data)} bytes of rdata")
        parts.append(_encode_name(record.name))
        parts.append(
            struct.pack("!HHIH", record.rtype, record.rclass, record.ttl, len(record.data))
        )
        parts.append(record.data)
    return b"".join(parts)


def build_query(ident: int, name: str, qtype: int = TYPE_A, recursion: bool = True) -> bytes:
    """A standard query for one name (what a resolver library sends)."""
    return build_message(Message(ident, _RD if recursion else 0, (Question(name, qtype),)))


def build_response(
    query: Message,
    rcode: int = NOERROR,
    answers: tuple[Record, ...] = (),
    authoritative: bool = True,
) -> bytes:
    """The answer to `query`: same id, question echoed, RD copied, recursion available."""
    flags = _QR | (query.opcode << 11) | _RA | (query.flags & _RD) | (rcode & 0xF)
    if authoritative:
        flags |= _AA
    return build_message(Message(query.id, flags, query.questions, answers))


def build_error_header(data: bytes, rcode: int) -> bytes | None:
    """A bare header answering unreadable `data` with `rcode` (FORMERR, usually), or None if
    `data` is too short even to carry an id, or is itself a response (never answer those:
    two stubs would answer each other forever)."""
    if len(data) < _HEADER.size:
        return None
    ident, flags = struct.unpack_from("!HH", data)
    if flags & _QR:
        return None
    opcode = (flags >> 11) & 0xF
    return _HEADER.pack(ident, _QR | (opcode << 11) | _RA | (flags & _RD) | rcode, 0, 0, 0, 0)


def a_record(name: str, address: str, ttl: int) -> Record:
    """An A record for `name` pointing at the IPv4 `address`."""
    return Record(name, TYPE_A, CLASS_IN, ttl, ipaddress.IPv4Address(address).packed)


def aaaa_record(name: str, address: str, ttl: int) -> Record:
    """An AAAA record for `name` pointing at the IPv6 `address`."""
    return Record(name, TYPE_AAAA, CLASS_IN, ttl, ipaddress.IPv6Address(address).packed)


# -- internals ------------------------------------------------------------------------------


def _read_record(data: bytes, offset: int) -> tuple[Record, int]:
    name, offset = _read_name(data, offset)
    if offset + 10 > len(data):
        raise DnsError("truncated", "record header ends early")
    rtype, rclass, ttl, length = struct.unpack_from("!HHIH", data, offset)
    offset += 10
    if offset + length > len(data):
        raise DnsError("truncated", "rdata ends early")
    return Record(name, rtype, rclass, ttl, bytes(data[offset : offset + length])), offset + length


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """A possibly compressed name at `offset`; returns it and the offset after it."""
    labels: list[str] = []
    total = 0
    end: int | None = None
    position = offset
    # Every pointer must go strictly backwards, so the walk always ends.
    limit = offset
    while True:
        if position >= len(data):
            raise DnsError("truncated", "name runs past the end")
        length = data[position]
        kind = length & 0xC0
        if kind == 0xC0:
            if position + 1 >= len(data):
                raise DnsError("truncated", "compression pointer cut short")
            target = ((length & 0x3F) << 8) | data[position + 1]
            if end is None:
                end = position + 2
            if target >= limit:
                raise DnsError("bad_pointer", "compression pointer does not point backwards")
            limit = target
            position = target
            continue
        if kind:
            raise DnsError("bad_label", f"label type {kind:#x} is not supported")
        position += 1
        if length == 0:
            break
        if position + length > len(data):
            raise DnsError("truncated", "label runs past the end")
        total += length + 1
        if total > _MAX_NAME:
            raise DnsError("name_too_long", "name longer than 255 bytes")
        labels.append(data[position : position + length].decode("latin-1"))
        position += length
    return ".".join(labels), end if end is not None else position


def _encode_name(name: str) -> bytes:
    text = name.rstrip(".")
    if not text:
        return b"\x00"
    out = bytearray()
    for label in text.split("."):
        try:
            raw = label.encode("latin-1")
        except UnicodeEncodeError:
            raise DnsError("bad_name", f"name {name!r} is not ASCII") from None
        if not 0 < len(raw) <= _MAX_LABEL:
            raise DnsError("bad_name", f"label of {len(raw)} bytes in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > _MAX_NAME:
        raise DnsError("name_too_long", f"{name!r} is longer than 255 bytes")
    return bytes(out)
