"""STUN (RFC 5389 / RFC 8489) messages: a strict codec, a binding responder and a client.

Routers answer binding requests so endpoints learn the address their NAT maps them to
(server-reflexive candidates); the TURN client (`proto/turn.py`) speaks the same format.
Nothing here does IO: `decode` parses one datagram, `encode` builds one, `BindingResponder`
turns a request into a response, `BindingClient` runs binding transactions with
retransmission against `now`.

Wire layout (network byte order)::

     0                   1                   2                   3
    |0 0| message type (14 bits)     |   message length (body bytes) |
    |                 magic cookie 0x2112A442                        |
    |              transaction id (96 bits)                          |
    | attribute type (16)            | attribute length (16)         |
    | value, padded to a multiple of 4 bytes ...                     |

The type interleaves a 12-bit method with a 2-bit class (C1 at bit 8, C0 at bit 4).
XOR-MAPPED-ADDRESS xors the port with the cookie's top 16 bits and the address with the
cookie (IPv4) or cookie + transaction id (IPv6). MESSAGE-INTEGRITY is HMAC-SHA1 (and
MESSAGE-INTEGRITY-SHA256 HMAC-SHA256) over the message up to the attribute, with the header's
length already counting it; FINGERPRINT is CRC-32 of everything before it xor 0x5354554E and
is always the last attribute.

Strictness (every refusal is a `StunError` with a reason, which callers count; nothing else
raises on input): the top two bits must be zero, the cookie present, the length a multiple of
4 equal to the body, every attribute inside the body (padding bytes are ignored, as RFC 8489 says:
RFC 5769's own vectors pad with spaces), at most one
FINGERPRINT and only last, after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 or
FINGERPRINT, and an attribute this codec understands must have its exact size.

History: 2026-12-04 first version (binding, the TURN methods, both integrities).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from umbranet.clock import Deadline, Instant

__all__ = [
    "ATTR",
    "BINDING",
    "ERROR",
    "INDICATION",
    "MAGIC_COOKIE",
    "REQUEST",
    "SUCCESS",
    "BindingClient",
    "BindingFailed",
    "BindingResponder",
    "BindingResult",
    "StunError",
    "StunMessage",
    "decode",
    "decode_xor_address",
    "encode",
    "encode_xor_address",
    "is_stun",
    "long_term_key",
]

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")
_FINGERPRINT_XOR = 0x5354554E
MAX_MESSAGE = 1500  # what fits one UDP datagram on an ordinary path; larger is refused

# classes
REQUEST, INDICATION, SUCCESS, ERROR = 0, 1, 2, 3
# methods
BINDING = 0x001
ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION, CHANNEL_BIND = (
    0x003,
    0x004,
    0x006,
    0x007,
    0x008,
    0x009,
)

ATTR = {
    "MAPPED-ADDRESS": 0x0001,
    "USERNAME": 0x0006,
    "MESSAGE-INTEGRITY": 0x0008,
    "ERROR-CODE": 0x0009,
    "UNKNOWN-ATTRIBUTES": 0x000A,
    "CHANNEL-NUMBER": 0x000C,
    "LIFETIME": 0x000D,
    "XOR-PEER-ADDRESS": 0x0012,
    "DATA": 0x0013,
    "REALM": 0x0014,
    "NONCE": 0x0015,
    "XOR-RELAYED-ADDRESS": 0x0016,
    "REQUESTED-TRANSPORT": 0x0019,
    "DONT-FRAGMENT": 0x001A,
    "MESSAGE-INTEGRITY-SHA256": 0x001C,
    "XOR-MAPPED-ADDRESS": 0x0020,
    "SOFTWARE": 0x8022,
    "FINGERPRINT": 0x8028,
}
_MI, _MI256, _FP = ATTR["MESSAGE-INTEGRITY"], ATTR["MESSAGE-INTEGRITY-SHA256"], ATTR["FINGERPRINT"]
# exact value sizes of attributes whose size is fixed (a wrong size is a malformed message)
_FIXED_SIZE = {_MI: 20, _MI256: 32, _FP: 4, ATTR["CHANNEL-NUMBER"]: 4, ATTR["LIFETIME"]: 4,
               ATTR["REQUESTED-TRANSPORT"]: 4, ATTR["DONT-FRAGMENT"]: 0}  # fmt: skip
_ADDRESS_ATTRS = {ATTR[n] for n in ("MAPPED-ADDRESS", "XOR-PEER-ADDRESS", "XOR-RELAYED-ADDRESS",
                                    "XOR-MAPPED-ADDRESS")}  # fmt: skip

Address = tuple[str, int]


class StunError(ValueError):
    """A datagram that is not an acceptable STUN message; `reason` is the counter's name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StunMessage:
    """One message. `attributes` keeps wire order; `integrity_at` is the byte offset of
    MESSAGE-INTEGRITY(-SHA256) in the decoded datagram (for `verify_integrity`)."""

    method: int
    cls: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...] = ()
    raw: bytes = field(default=b"", compare=False, repr=False)
    integrity_at: dict[int, int] = field(default_factory=dict, compare=False, repr=False)

    def get(self, attr: int) -> bytes | None:
        """The first value of `attr`, or None."""
        for kind, value in self.attributes:
            if kind == attr:
                return value
        return None

    def address(self, attr: int = ATTR["XOR-MAPPED-ADDRESS"]) -> Address | None:
        """An address attribute decoded (None when absent or malformed)."""
        value = self.get(attr)
        if value is None:
            return None
        try:
            if attr == ATTR["MAPPED-ADDRESS"]:
                return _decode_address(value)
            return decode_xor_address(value, self.transaction_id)
        except StunError:
            return None

    def error_code(self) -> tuple[int, str] | None:
        value = self.get(ATTR["ERROR-CODE"])
        if value is None or len(value) < 4:
            return None
        return (value[2] & 0x7) * 100 + value[3], value[4:].decode("utf-8", "replace")

    def verify_integrity(self, key: bytes) -> bool:
        """True iff the message carries a MESSAGE-INTEGRITY(-SHA256) that `key` produced; with
        both, both must match (a forged SHA1 beside a good SHA256 is still forged)."""
        if not self.integrity_at:
            return False
        for attr, offset in self.integrity_at.items():
            size = 20 if attr == _MI else 32
            body_to = offset + 4 + size  # the header length counts up to the attribute's end
            head = self.raw[:2] + struct.pack("!H", body_to - 20) + self.raw[4:20]
            digest = hashlib.sha1 if attr == _MI else hashlib.sha256
            expect = hmac.new(key, head + self.raw[20:offset], digest).digest()
            if not hmac.compare_digest(expect, self.raw[offset + 4 : body_to]):
                return False
        return True


def message_type(method: int, cls: int) -> int:
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )


def _split_type(kind: int) -> tuple[int, int]:
    method = (kind & 0x000F) | ((kind >> 1) & 0x0070) | ((kind >> 2) & 0x0F80)
    cls = ((kind >> 4) & 1) | ((kind >> 7) & 2)
    return method, cls


def is_stun(data: bytes) -> bool:
    """A cheap look for demultiplexing a shared socket: top bits zero and the cookie."""
    return len(data) >= 20 and data[0] & 0xC0 == 0 and data[4:8] == _COOKIE_BYTES


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 5389 long-term credential key: MD5(username ":" realm ":" password)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode(), usedforsecurity=False).digest()


def encode(
    message: StunMessage,
    *,
    integrity_key: bytes | None = None,
    sha256: bool = False,
    fingerprint: bool = True,
) -> bytes:
    """The datagram for `message`, with MESSAGE-INTEGRITY (SHA-1, or SHA-256 if `sha256`)
    under `integrity_key` and a FINGERPRINT appended when asked."""
    if len(message.transaction_id) != 12:
        raise ValueError("transaction id must be 12 bytes")
    body = bytearray()
    for kind, value in message.attributes:
        body += _ATTR.pack(kind, len(value)) + value + b"\0" * (-len(value) % 4)
    kind = message_type(message.method, message.cls)
    if integrity_key is not None:
        attr, size, digest = (_MI256, 32, hashlib.sha256) if sha256 else (_MI, 20, hashlib.sha1)
        head = _HEADER.pack(kind, len(body) + 4 + size, MAGIC_COOKIE, message.transaction_id)
        mac = hmac.new(integrity_key, head + bytes(body), digest).digest()
        body += _ATTR.pack(attr, size) + mac
    if fingerprint:
        head = _HEADER.pack(kind, len(body) + 8, MAGIC_COOKIE, message.transaction_id)
        crc = (binascii.crc32(head + bytes(body)) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
        body += _ATTR.pack(_FP, 4) + struct.pack("!I", crc)
    return _HEADER.pack(kind, len(body), MAGIC_COOKIE, message.transaction_id) + bytes(body)


def decode(data: bytes) -> StunMessage:
    """Parse one datagram strictly (see the module's rules); `StunError` otherwise."""
    if len(data) < 20:
        raise StunError("short")
    if len(data) > MAX_MESSAGE:
        raise StunError("oversized")
    kind, length, cookie, txid = _HEADER.unpack_from(data)
    if kind & 0xC000:
        raise StunError("not_stun")
    if cookie != MAGIC_COOKIE:
        raise StunError("bad_cookie")
    if length % 4 or length != len(data) - 20:
        raise StunError("bad_length")
    attributes: list[tuple[int, bytes]] = []
    integrity: dict[int, int] = {}
    offset = 20
    while offset < len(data):
        if offset + 4 > len(data):
            raise StunError("truncated_attribute")
        attr, size = _ATTR.unpack_from(data, offset)
        end = offset + 4 + size
        padded = end + (-size % 4)
        if padded > len(data):
            raise StunError("truncated_attribute")
        if attr in _FIXED_SIZE and size != _FIXED_SIZE[attr]:
            raise StunError("bad_attribute_size")
        if attr in _ADDRESS_ATTRS and size not in (8, 20):
            raise StunError("bad_attribute_size")
        if attributes and attributes[-1][0] == _FP:
            raise StunError("attribute_after_fingerprint")
        if integrity and attr not in (_MI256, _FP):
            raise StunError("attribute_after_integrity")
        value = bytes(data[end - size : end])
        if attr == _FP:
            crc = (binascii.crc32(data[:offset]) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
            if struct.unpack("!I", value)[0] != crc:
                raise StunError("bad_fingerprint")
        elif attr in (_MI, _MI256):
            if attr in integrity or (attr == _MI and _MI256 in integrity):
                raise StunError("attribute_after_integrity")
            integrity[attr] = offset
        attributes.append((attr, value))
        offset = padded
    method, cls = _split_type(kind)
    return StunMessage(method, cls, bytes(txid), tuple(attributes), bytes(data), integrity)


def encode_xor_address(address: Address, transaction_id: bytes) -> bytes:
    host, port = address
    ip = ipaddress.ip_address(host)
    xport = port ^ (MAGIC_COOKIE >> 16)
    if ip.version == 4:
        raw = int(ip) ^ MAGIC_COOKIE
        return struct.pack("!BBHI", 0, 1, xport, raw)
    mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
    return struct.pack("!BBH", 0, 2, xport) + (int(ip) ^ mask).to_bytes(16, "big")


def decode_xor_address(value: bytes, transaction_id: bytes) -> Address:
    family, port, raw = _address_parts(value)
    port ^= MAGIC_COOKIE >> 16
    if family == 1:
        return str(ipaddress.IPv4Address(int.from_bytes(raw, "big") ^ MAGIC_COOKIE)), port
    mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
    return str(ipaddress.IPv6Address(int.from_bytes(raw, "big") ^ mask)), port


def _decode_address(value: bytes) -> Address:
    _family, port, raw = _address_parts(value)
    return str(ipaddress.ip_address(raw)), port


def _address_parts(value: bytes) -> tuple[int, int, bytes]:
    if len(value) < 4:
        raise StunError("bad_address")
    family, port = value[1], struct.unpack_from("!H", value, 2)[0]
    if (family, len(value)) not in ((1, 8), (2, 20)):
        raise StunError("bad_address")
    return family, port, value[4:]


def error_attribute(code: int, reason: str) -> tuple[int, bytes]:
    return ATTR["ERROR-CODE"], struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode()


class BindingResponder:
    """What a router's STUN port does: answer each well-formed binding request with the
    source address it came from; everything else is counted and ignored (no error replies to
    garbage, so the port cannot be used to reflect traffic at a forged source)."""

    def __init__(self, software: str = "umbranet") -> None:
        self._software = software.encode()[:128]
        self.counters: Counter[str] = Counter()

    def handle_datagram(self, data: bytes, source: Address) -> bytes | None:
        try:
            message = decode(data)
        except StunError as exc:
            self.counters[f"drop_{exc.reason}"] += 1
            return None
        if (message.method, message.cls) != (BINDING, REQUEST):
            self.counters["drop_not_binding_request"] += 1
            return None
        self.counters["binding_requests"] += 1
        attrs = (
            (ATTR["XOR-MAPPED-ADDRESS"], encode_xor_address(source, message.transaction_id)),
            (ATTR["SOFTWARE"], self._software),
        )
        return encode(StunMessage(BINDING, SUCCESS, message.transaction_id, attrs))

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)


@dataclass(frozen=True, slots=True)
class BindingResult:
    """A server answered: `mapped` is how it saw us, `rtt` from the last (re)transmission."""

    server: Address
    mapped: Address
    rtt: float


@dataclass(frozen=True, slots=True)
class BindingFailed:
    server: Address
    reason: str  # "timeout" or "error_<code>"


@dataclass(slots=True)
class _Transaction:
    server: Address
    txid: bytes
    datagram: bytes
    sent_at: float
    tries: int
    next_at: float


class BindingClient:
    """Binding transactions towards several servers over one socket (sans-IO).

    `start(server, now)` queues a request; `handle_datagram` consumes responses it is waiting
    for (returns False for anything else, so a shared socket can try the next demultiplexer);
    retransmits every `rto` seconds, doubling, `tries` times in all, then `BindingFailed`."""

    def __init__(
        self, random_bytes: Callable[[int], bytes], *, rto: float = 0.25, tries: int = 4
    ) -> None:
        self._random = random_bytes
        self._rto = rto
        self._tries = tries
        self._pending: dict[bytes, _Transaction] = {}
        self._out: list[tuple[bytes, Address]] = []
        self._events: list[BindingResult | BindingFailed] = []
        self.counters: Counter[str] = Counter()

    def start(self, server: Address, now: Instant) -> bytes:
        txid = self._random(12)
        datagram = encode(StunMessage(BINDING, REQUEST, txid))
        self._pending[txid] = _Transaction(
            server, txid, datagram, now.mono, 1, now.mono + self._rto
        )
        self._out.append((datagram, server))
        self.counters["requests"] += 1
        return txid

    def start_all(self, servers: Iterable[Address], now: Instant) -> None:
        for server in servers:
            self.start(server, now)

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def handle_datagram(self, data: bytes, source: Address, now: Instant) -> bool:
        if not is_stun(data):
            return False
        try:
            message = decode(data)
        except StunError as exc:
            self.counters[f"drop_{exc.reason}"] += 1
            return True
        pending = self._pending.get(message.transaction_id)
        if pending is None or message.method != BINDING or message.cls not in (SUCCESS, ERROR):
            self.counters["drop_unexpected"] += 1
            return True
        if _norm(source) != _norm(pending.server):
            self.counters["drop_wrong_source"] += 1
            return True
        del self._pending[message.transaction_id]
        if message.cls == ERROR:
            code = message.error_code()
            self._events.append(BindingFailed(pending.server, f"error_{code[0] if code else 0}"))
            return True
        mapped = message.address() or message.address(ATTR["MAPPED-ADDRESS"])
        if mapped is None:
            self._events.append(BindingFailed(pending.server, "no_mapped_address"))
            return True
        self.counters["responses"] += 1
        self._events.append(BindingResult(pending.server, mapped, now.mono - pending.sent_at))
        return True

    def handle_timeout(self, now: Instant) -> None:
        for txid, tx in list(self._pending.items()):
            if tx.next_at > now.mono:
                continue
            if tx.tries >= self._tries:
                del self._pending[txid]
                self.counters["timeouts"] += 1
                self._events.append(BindingFailed(tx.server, "timeout"))
                continue
            tx.tries += 1
            tx.sent_at = now.mono
            tx.next_at = now.mono + self._rto * (2 ** (tx.tries - 1))
            self._out.append((tx.datagram, tx.server))
            self.counters["retransmits"] += 1

    def poll_transmit(self) -> tuple[bytes, Address] | None:
        return self._out.pop(0) if self._out else None

    @property
    def queued(self) -> bool:
        """Whether datagrams wait in `poll_transmit`."""
        return bool(self._out)

    def poll_event(self) -> BindingResult | BindingFailed | None:
        return self._events.pop(0) if self._events else None

    def poll_timeout(self) -> Deadline | None:
        if not self._pending:
            return None
        return Deadline(min(tx.next_at for tx in self._pending.values()), "stun retransmit")

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)


def _norm(address: Sequence[object]) -> tuple[str, int]:
    host = str(address[0])
    if host.startswith("::ffff:"):
        host = host[7:]
    return host, int(str(address[1]))
