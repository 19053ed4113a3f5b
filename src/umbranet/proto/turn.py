"""A TURN client (RFC 8656, UDP relay) as a sans-IO machine, over UDP or a stream.

A standard TURN server (coturn) configured for the network can relay WireGuard datagrams
when no direct path works and no Umbranet router relay is wanted. The controller hands out
credentials in coturn's shared-secret scheme (`controller/service/nat.py`); this machine
uses them as TURN long-term credentials.

Flow (each request retransmitted every `rto`, doubling, `tries` times):

    Allocate (no auth) -> 401 REALM+NONCE -> Allocate (USERNAME, REALM, NONCE, integrity)
        -> success: XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS, LIFETIME      (Allocated)
    CreatePermission(peer IP)  -> success                                 (PermissionCreated)
    ChannelBind(0x4000.., peer) -> success                                (ChannelBound)
    send(peer, data): ChannelData if a channel is bound, else a Send indication
    incoming Data indication or ChannelData                               (DataReceived)
    Refresh at 3/4 of the lifetime; permissions every 4 min (they last 5), channels every
    9 min (they last 10); a 438 (stale nonce) takes the new nonce and retries once.

ChannelData (RFC 8656 section 12.4): channel number (2, 0x4000-0x4FFF) | length (2) | data,
padded to 4 bytes over UDP only if the sender wishes; we do not pad and accept either.
Over a stream (``stream=True``: TCP or TLS to the server, `proto/turn_stream.py` cuts the
bytes back into messages, fed in with `handle_stream`) nothing is retransmitted: the stream
is reliable, so a request unanswered after `stream_timeout` (RFC 8656's 39.5 s) has failed;
ChannelData is padded to 4 bytes, as the RFC requires there; a stream out of step is
`AllocationFailed("stream_<why>")` and the shell closes it.
Responses are accepted only from the server, matching an outstanding transaction, with a
valid MESSAGE-INTEGRITY once authenticated; everything else is counted and dropped.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from umbranet.clock import Deadline, Instant
from umbranet.proto import stun
from umbranet.proto.stun import ATTR, StunError, StunMessage
from umbranet.proto.turn_stream import StreamDeframer, pad_channel_data

__all__ = [
    "Allocated",
    "AllocationFailed",
    "ChannelBound",
    "DataReceived",
    "Event",
    "PermissionCreated",
    "TurnClient",
]

Address = tuple[str, int]
_UDP = struct.pack("!B3x", 17)
PERMISSION_REFRESH = 240.0
CHANNEL_REFRESH = 540.0
FIRST_CHANNEL = 0x4000
STREAM_TIMEOUT = 39.5  # RFC 8656 §3.3 (after RFC 5389 §7.2.2): a reliable request's wait


@dataclass(frozen=True, slots=True)
class Allocated:
    relayed: Address
    mapped: Address | None
    lifetime: int


@dataclass(frozen=True, slots=True)
class AllocationFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class PermissionCreated:
    peer_ip: str


@dataclass(frozen=True, slots=True)
class ChannelBound:
    peer: Address
    channel: int


@dataclass(frozen=True, slots=True)
class DataReceived:
    peer: Address
    data: bytes


Event = Allocated | AllocationFailed | PermissionCreated | ChannelBound | DataReceived


@dataclass(slots=True)
class _Request:
    method: int
    attrs: tuple[tuple[int, bytes], ...]
    what: object  # what the answer confirms (peer IP, (peer, channel), ...)
    txid: bytes = b""
    datagram: bytes = b""
    tries: int = 0
    next_at: float = 0.0
    stale_retried: bool = False


@dataclass(slots=True)
class _State:
    realm: str | None = None
    nonce: bytes | None = None
    key: bytes | None = None
    relayed: Address | None = None
    lifetime: int = 0
    refresh_at: float = 0.0
    permissions: dict[str, float] = field(default_factory=dict)  # peer IP -> refresh at
    channels: dict[Address, tuple[int, float]] = field(default_factory=dict)
    by_channel: dict[int, Address] = field(default_factory=dict)


class TurnClient:
    """One allocation on `server` for `username`/`password` (the controller's credential)."""

    def __init__(
        self,
        server: Address,
        username: str,
        password: str,
        *,
        random_bytes: Callable[[int], bytes],
        lifetime: int = 600,
        rto: float = 0.5,
        tries: int = 5,
        stream: bool = False,
        stream_timeout: float = STREAM_TIMEOUT,
    ) -> None:
        self.server = server
        self.stream = stream
        self._stream_timeout = stream_timeout
        self._deframer = StreamDeframer() if stream else None
        self._username = username
        self._password = password
        self._random = random_bytes
        self._lifetime = lifetime
        self._rto, self._tries = rto, tries
        self._s = _State()
        self._pending: dict[bytes, _Request] = {}
        self._out: list[tuple[bytes, Address]] = []
        self._events: list[Event] = []
        self.counters: Counter[str] = Counter()

    # -- commands -------------------------------------------------------------------------

    def allocate(self, now: Instant) -> None:
        attrs = ((ATTR["REQUESTED-TRANSPORT"], _UDP), (ATTR["LIFETIME"], _u32(self._lifetime)))
        self._request(stun.ALLOCATE, attrs, "allocate", now)

    def create_permission(self, peer_ip: str, now: Instant) -> None:
        attr = (ATTR["XOR-PEER-ADDRESS"], b"")  # filled per transaction (xor with its id)
        self._request(stun.CREATE_PERMISSION, (attr,), ("permission", peer_ip), now)

    def bind_channel(self, peer: Address, now: Instant) -> int:
        existing = self._s.channels.get(peer)
        channel = existing[0] if existing else FIRST_CHANNEL + len(self._s.by_channel)
        if channel > 0x4FFF:
            raise ValueError("no channel numbers left")
        self._s.by_channel[channel] = peer
        attrs = (
            (ATTR["CHANNEL-NUMBER"], struct.pack("!H2x", channel)),
            (ATTR["XOR-PEER-ADDRESS"], b""),
        )
        self._request(stun.CHANNEL_BIND, attrs, ("channel", peer, channel), now)
        return channel

    def send(self, peer: Address, data: bytes) -> None:
        """Relay `data` to `peer` (needs a permission for its IP, which the server checks)."""
        bound = self._s.channels.get(peer)
        if bound is not None:
            message = struct.pack("!HH", bound[0], len(data)) + data
            self._out.append((pad_channel_data(message) if self.stream else message, self.server))
            self.counters["channel_data_out"] += 1
            return
        txid = self._random(12)
        attrs = (
            (ATTR["XOR-PEER-ADDRESS"], stun.encode_xor_address(peer, txid)),
            (ATTR["DATA"], data),
        )
        self._out.append(
            (stun.encode(StunMessage(stun.SEND, stun.INDICATION, txid, attrs)), self.server)
        )
        self.counters["send_indications"] += 1

    def close(self, now: Instant) -> None:
        """Release the allocation (Refresh with lifetime 0)."""
        if self._s.relayed is not None:
            self._request(stun.REFRESH, ((ATTR["LIFETIME"], _u32(0)),), "release", now)
            self._s.relayed = None

    @property
    def relayed(self) -> Address | None:
        return self._s.relayed

    def has_permission(self, peer_ip: str) -> bool:
        """Granted, or asked for (the request is in flight)."""
        return peer_ip in self._s.permissions or any(
            isinstance(r.what, tuple) and r.what == ("permission", peer_ip)
            for r in self._pending.values()
        )

    # -- inputs ---------------------------------------------------------------------------

    def handle_stream(self, data: bytes, now: Instant) -> None:
        """Bytes read from the stream to the server (``stream=True`` only)."""
        deframer = self._deframer
        if deframer is None:
            raise RuntimeError("handle_stream on a UDP TURN client")  # local misuse
        if deframer.broken is not None:
            return
        deframer.feed(data)
        while (message := deframer.poll_message()) is not None:
            self.handle_datagram(message, self.server, now)
        if deframer.broken is not None:
            self.counters[f"stream_{deframer.broken}"] += 1
            self._pending.clear()
            self._s.relayed = None
            self._events.append(AllocationFailed(f"stream_{deframer.broken}"))

    @property
    def broken(self) -> str | None:
        """Why the stream to the server is out of step (the shell closes it), or None."""
        return None if self._deframer is None else self._deframer.broken

    def handle_datagram(self, data: bytes, source: Address, now: Instant) -> bool:
        """Consume what the TURN server sent (True), or leave the datagram to others."""
        if source != self.server:
            return False
        if len(data) >= 4 and data[0] & 0xC0 == 0x40:
            return self._channel_data(data)
        if not stun.is_stun(data):
            return False
        try:
            message = stun.decode(data)
        except StunError as exc:
            self.counters[f"drop_{exc.reason}"] += 1
            return True
        if message.cls == stun.INDICATION and message.method == stun.DATA:
            peer, payload = message.address(ATTR["XOR-PEER-ADDRESS"]), message.get(ATTR["DATA"])
            if peer is None or payload is None:
                self.counters["drop_bad_data_indication"] += 1
            else:
                self._events.append(DataReceived(peer, payload))
            return True
        request = self._pending.get(message.transaction_id)
        if request is None or message.cls not in (stun.SUCCESS, stun.ERROR):
            self.counters["drop_unexpected"] += 1
            return True
        if self._s.key is not None and not message.verify_integrity(self._s.key):
            code = message.error_code()
            if not (code and code[0] in (401, 438)):  # those come without our integrity
                self.counters["drop_bad_integrity"] += 1
                return True
        del self._pending[message.transaction_id]
        if message.cls == stun.ERROR:
            self._error(request, message, now)
        else:
            self._success(request, message, now)
        return True

    def _channel_data(self, data: bytes) -> bool:
        channel, length = struct.unpack_from("!HH", data)
        peer = self._s.by_channel.get(channel)
        if peer is None or len(data) < 4 + length:
            self.counters["drop_bad_channel_data"] += 1
            return True
        self._events.append(DataReceived(peer, data[4 : 4 + length]))
        return True

    def _error(self, request: _Request, message: StunMessage, now: Instant) -> None:
        code, reason = message.error_code() or (0, "")
        nonce, realm = message.get(ATTR["NONCE"]), message.get(ATTR["REALM"])
        first = code == 401 and self._s.key is None and bool(nonce and realm)
        stale = code == 438 and nonce is not None and not request.stale_retried
        if first and nonce and realm:
            self._s.nonce, self._s.realm = nonce, realm.decode("utf-8", "replace")
            self._s.key = stun.long_term_key(self._username, self._s.realm, self._password)
            self._send(request, now)
            return
        if stale and nonce:
            self._s.nonce = nonce
            request.stale_retried = True
            self._send(request, now)
            return
        self.counters[f"error_{code}"] += 1
        if request.what == "allocate":
            self._events.append(AllocationFailed(f"error {code} {reason}".strip()))

    def _success(self, request: _Request, message: StunMessage, now: Instant) -> None:
        what = request.what
        lifetime = message.get(ATTR["LIFETIME"])
        if what == "allocate":
            relayed = message.address(ATTR["XOR-RELAYED-ADDRESS"])
            if relayed is None:
                self._events.append(AllocationFailed("no relayed address"))
                return
            self._s.relayed = relayed
            self._s.lifetime = struct.unpack("!I", lifetime)[0] if lifetime else self._lifetime
            self._s.refresh_at = now.mono + self._s.lifetime * 0.75
            self._events.append(Allocated(relayed, message.address(), self._s.lifetime))
        elif what == "refresh" and lifetime:
            self._s.lifetime = struct.unpack("!I", lifetime)[0]
            self._s.refresh_at = now.mono + self._s.lifetime * 0.75
        elif isinstance(what, tuple) and what[0] == "permission":
            known = what[1] in self._s.permissions
            self._s.permissions[what[1]] = now.mono + PERMISSION_REFRESH
            if not known:
                self._events.append(PermissionCreated(what[1]))
        elif isinstance(what, tuple) and what[0] == "channel":
            known = what[1] in self._s.channels
            self._s.channels[what[1]] = (what[2], now.mono + CHANNEL_REFRESH)
            if not known:
                self._events.append(ChannelBound(what[1], what[2]))

    def handle_timeout(self, now: Instant) -> None:
        t = now.mono
        for txid, request in list(self._pending.items()):
            if request.next_at > t:
                continue
            del self._pending[txid]
            if request.tries >= self._tries or self.stream:
                self.counters["timeouts"] += 1
                if request.what == "allocate":
                    self._events.append(AllocationFailed("timeout"))
                continue
            self.counters["retransmits"] += 1
            self._send(request, now, fresh_txid=False)
        if self._s.relayed is None:
            return
        if t >= self._s.refresh_at:
            self._s.refresh_at = t + self._rto * 2**self._tries  # until the answer moves it
            self._request(stun.REFRESH, ((ATTR["LIFETIME"], _u32(self._lifetime)),), "refresh", now)
        for ip, at in list(self._s.permissions.items()):
            if t >= at:
                self._s.permissions[ip] = t + PERMISSION_REFRESH
                self.create_permission(ip, now)
        for peer, (channel, at) in list(self._s.channels.items()):
            if t >= at:
                self._s.channels[peer] = (channel, t + CHANNEL_REFRESH)
                self.bind_channel(peer, now)

    # -- outputs --------------------------------------------------------------------------

    def poll_transmit(self) -> tuple[bytes, Address] | None:
        return self._out.pop(0) if self._out else None

    @property
    def queued(self) -> bool:
        """Whether datagrams wait in `poll_transmit`."""
        return bool(self._out)

    def poll_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def poll_timeout(self) -> Deadline | None:
        times = [(r.next_at, "turn retransmit") for r in self._pending.values()]
        if self._s.relayed is not None:
            times.append((self._s.refresh_at, "turn refresh"))
            times += [(at, "turn permission") for at in self._s.permissions.values()]
            times += [(at, "turn channel") for _, at in self._s.channels.values()]
        if not times:
            return None
        at, reason = min(times)
        return Deadline(at, reason)

    def statistics(self) -> dict[str, object]:
        return {
            "relayed": None if self._s.relayed is None else list(self._s.relayed),
            "permissions": sorted(self._s.permissions),
            "channels": len(self._s.channels),
            "transport": "stream" if self.stream else "udp",
            "counters": dict(self.counters),
        }

    # -- requests -------------------------------------------------------------------------

    def _request(
        self, method: int, attrs: tuple[tuple[int, bytes], ...], what: object, now: Instant
    ) -> None:
        self._send(_Request(method, attrs, what), now)

    def _send(self, request: _Request, now: Instant, *, fresh_txid: bool = True) -> None:
        if fresh_txid or not request.txid:
            request.txid = self._random(12)
            request.tries = 0
            attrs = list(self._with_peer(request))
            key = self._s.key
            if key is not None and self._s.realm is not None and self._s.nonce is not None:
                attrs += [
                    (ATTR["USERNAME"], self._username.encode()),
                    (ATTR["REALM"], self._s.realm.encode()),
                    (ATTR["NONCE"], self._s.nonce),
                ]
            message = StunMessage(request.method, stun.REQUEST, request.txid, tuple(attrs))
            request.datagram = stun.encode(message, integrity_key=key)
        request.tries += 1
        wait = self._stream_timeout if self.stream else self._rto * 2 ** (request.tries - 1)
        request.next_at = now.mono + wait
        self._pending[request.txid] = request
        self._out.append((request.datagram, self.server))

    def _with_peer(self, request: _Request) -> list[tuple[int, bytes]]:
        """XOR-PEER-ADDRESS depends on the transaction id, so it is encoded per send."""
        out: list[tuple[int, bytes]] = []
        for kind, given in request.attrs:
            value = given
            if kind == ATTR["XOR-PEER-ADDRESS"] and not given:
                what = request.what
                assert isinstance(what, tuple)
                peer: Address = (what[1], 0) if what[0] == "permission" else what[1]
                value = stun.encode_xor_address(peer, request.txid)
            out.append((kind, value))
        return out


def _u32(value: int) -> bytes:
    return struct.pack("!I", value)
