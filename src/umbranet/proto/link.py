"""One end of a link (an endpoint's link to a router, or a router's link to a peer), sans-IO.

A link is one authenticated byte stream carrying frames for many circuits. This machine owns
what belongs to the link itself, for either side and any carrier:

- HELLO: the first frame each way, `{"v": version, "role": "endpoint" | "router", "name"}`.
  The opener (the side that connected) says it first; the acceptor answers. A role must match
  the peer's certificate: only a `router` SVID may speak as a router, and a router never
  accepts a router SVID speaking as an endpoint (so a router identity cannot dial with
  another router's rights, and a device cannot claim to relay).
- Keepalive: a PING every `ping_interval`, its PONG giving the round-trip time; a peer heard
  from for nothing (no frame at all) for `silent_after` is dead, whatever the kernel thinks
  (a half-open TCP connection, a NAT that dropped its mapping).
- GOAWAY: either side says why it is leaving; the link is closed after it.
- Id spaces: the opener numbers what it opens with odd ids, the acceptor with even ones, so
  both can open circuits on one link without asking. Which side a circuit serves is never
  inferred from its id: owners keep that on their own records.

Rules of this file:
- States and moves are `_MOVES`; every change goes through `_move`.
- Inputs: `heard(now)` once per read, `handle_link_frame(frame, now)` for circuit-0 frames,
  `handle_timeout(now)`, `close(code, reason)`. Outputs: `poll_transmit()`, `poll_event()`,
  `poll_timeout()`. A misbehaving peer raises `WireError` to the owner, which closes the link
  with its code; nothing else raises.
- `outbox` is the link's send queue, shared with the owner: the router's switch appends
  relayed frames to it directly (one list append per frame is the data path's whole cost).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Container
from dataclasses import dataclass
from enum import Enum

from umbranet.clock import Deadline, Instant, deadline
from umbranet.wire import (
    PROTOCOL_VERSION,
    ErrorCode,
    Frame,
    FrameType,
    WireError,
    decode_control,
    encode_control,
)
from umbranet.wire.control import decode_error, encode_error
from umbranet.wire.frames import encode_frame

__all__ = [
    "Closing",
    "LinkSession",
    "LinkState",
    "LinkTimers",
    "PeerSilent",
    "Ready",
    "Role",
]

_PING = struct.Struct("!Q")
MAX_PING_PAYLOAD = 64


class Role(Enum):
    """What a side of a link is: an endpoint (SDK, agent) or a router."""

    ENDPOINT = "endpoint"
    ROUTER = "router"


class LinkState(Enum):
    """Where the link is in its life."""

    HELLO = "hello"  # waiting for the peer's HELLO
    READY = "ready"  # HELLO exchanged: circuits may open
    CLOSED = "closed"  # GOAWAY sent or received, or the peer went silent


_MOVES: dict[LinkState, frozenset[LinkState]] = {
    LinkState.HELLO: frozenset({LinkState.READY, LinkState.CLOSED}),
    LinkState.READY: frozenset({LinkState.CLOSED}),
    LinkState.CLOSED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class LinkTimers:
    """How long a link waits, in seconds. Keepalive detects a dead peer within
    `silent_after` (plus at most one `ping_interval` of timer granularity)."""

    hello_timeout: float = 10.0
    ping_interval: float = 5.0
    silent_after: float = 15.0


@dataclass(frozen=True, slots=True)
class Ready:
    """The peer said HELLO; `peer_name` is what it calls itself (display only)."""

    peer_role: Role
    peer_name: str


@dataclass(frozen=True, slots=True)
class PeerSilent:
    """Nothing arrived for `silent_for` seconds: the link is dead; close it."""

    silent_for: float


@dataclass(frozen=True, slots=True)
class Closing:
    """The link is over: GOAWAY from the peer (`by_peer`), or from us."""

    code: ErrorCode
    reason: str
    by_peer: bool


Event = Ready | PeerSilent | Closing


class LinkSession:
    """The link-level protocol of one link end. See the module docstring."""

    def __init__(
        self,
        role: Role,
        *,
        opener: bool,
        name: str,
        peer_kind: str,
        now: Instant,
        timers: LinkTimers | None = None,
    ) -> None:
        self.role = role
        self.opener = opener
        self.name = name
        self.peer_kind = peer_kind  # the SPIFFE ID kind of the peer's verified certificate
        self.timers = timers or LinkTimers()
        self.state = LinkState.HELLO
        self.peer_role: Role | None = None
        self.peer_name = ""
        self.outbox: list[bytes] = []
        self.rtt: float | None = None  # the latest measured round trip, seconds
        self.pings_sent = 0
        self.pongs_received = 0
        self._events: deque[Event] = deque()
        self._started = now.mono
        # Public: owners on the data path set it inline instead of calling `heard`.
        self.last_heard = now.mono
        self._next_ping = now.mono + self.timers.ping_interval
        self._ping_seq = 0
        self._ping_sent_at: dict[int, float] = {}
        self._next_id = 1 if opener else 2
        if opener:
            self._send_hello()

    # -- inputs -------------------------------------------------------------------------

    def heard(self, now: Instant) -> None:
        """Something arrived from the peer (call once per read, before handling frames)."""
        self.last_heard = now.mono

    def handle_link_frame(self, frame: Frame, now: Instant) -> None:
        """HELLO, PING, PONG or GOAWAY on circuit 0. Raises WireError if the peer misbehaves."""
        ftype = frame.type
        if self.state is LinkState.HELLO:
            self._hello(frame)
        elif ftype == FrameType.PING:
            if len(frame.payload) > MAX_PING_PAYLOAD:
                raise WireError(ErrorCode.PROTOCOL_ERROR, "PING payload over 64 bytes")
            self.send(FrameType.PONG, 0, bytes(frame.payload))
        elif ftype == FrameType.PONG:
            self._pong(frame, now)
        elif ftype == FrameType.GOAWAY:
            if self.state is not LinkState.CLOSED:
                code, reason = decode_error(frame.payload)
                # Answered, so the peer knows its goodbye arrived before the carrier closes.
                self.send(
                    FrameType.GOAWAY, 0, encode_error(ErrorCode.NO_ERROR, "goodbye acknowledged")
                )
                self._move(LinkState.CLOSED)
                self._events.append(Closing(code, reason, by_peer=True))
        else:
            raise WireError(ErrorCode.PROTOCOL_ERROR, f"unexpected {FrameType(ftype).name}")

    def handle_timeout(self, now: Instant) -> None:
        """Run whatever is due: the HELLO deadline, a keepalive PING, the silence check."""
        if self.state is LinkState.CLOSED:
            return
        mono = now.mono
        if self.state is LinkState.HELLO and mono >= self._started + self.timers.hello_timeout:
            self.close(ErrorCode.PROTOCOL_ERROR, "no HELLO in time")
            return
        silent_for = mono - self.last_heard
        if silent_for >= self.timers.silent_after:
            self._move(LinkState.CLOSED)
            self._events.append(PeerSilent(silent_for))
            return
        if self.state is LinkState.READY and mono >= self._next_ping:
            self._ping(mono)

    def close(self, code: ErrorCode, reason: str) -> None:
        """Say GOAWAY with why; the owner closes the carrier after sending it."""
        if self.state is LinkState.CLOSED:
            return
        self.send(FrameType.GOAWAY, 0, encode_error(code, reason))
        self._move(LinkState.CLOSED)
        self._events.append(Closing(code, reason, by_peer=False))

    # -- outputs ------------------------------------------------------------------------

    def poll_transmit(self) -> list[bytes]:
        """Everything queued for the peer, in order (the owner writes it as one)."""
        if not self.outbox:
            return []
        out = self.outbox[:]
        self.outbox.clear()
        return out

    def poll_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> Deadline | None:
        """The next moment `handle_timeout` has work; None once the link is closed."""
        if self.state is LinkState.CLOSED:
            return None
        # Called after every read: compare the moments first, build one Deadline.
        silent = self.last_heard + self.timers.silent_after
        if self.state is LinkState.HELLO:
            hello = self._started + self.timers.hello_timeout
            return deadline((hello, "hello") if hello < silent else (silent, "peer_silent"))
        if self._next_ping < silent:
            return deadline((self._next_ping, "keepalive"))
        return deadline((silent, "peer_silent"))

    # -- for owners ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state is LinkState.READY

    def send(self, ftype: FrameType, circuit: int, payload: bytes = b"") -> None:
        """Queue one frame."""
        self.outbox.append(encode_frame(ftype, circuit, payload))

    def next_id(self, in_use: Container[int]) -> int:
        """A fresh id from our half of the id space, skipping ids still in use."""
        for _ in range(1 << 20):
            ident = self._next_id
            self._next_id = (ident + 2) % (1 << 32) or (1 if self.opener else 2)
            if ident not in in_use:
                return ident
        raise RuntimeError("no free id on this link")

    def is_peer_id(self, ident: int) -> bool:
        """The peer may open this id (it is in the peer's half of the id space)."""
        return ident != 0 and (ident % 2 == 0) == self.opener

    def statistics(self) -> dict[str, float | int | str | None]:
        return {
            "state": self.state.value,
            "peer": self.peer_name,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "pings_sent": self.pings_sent,
            "pongs_received": self.pongs_received,
        }

    # -- internals ----------------------------------------------------------------------

    def _hello(self, frame: Frame) -> None:
        if frame.type != FrameType.HELLO or frame.circuit != 0:
            raise WireError(ErrorCode.PROTOCOL_ERROR, "first frame must be HELLO")
        ctl = decode_control(frame.payload)
        version = ctl.int_field("v", 0, 65535)
        if version != PROTOCOL_VERSION:
            raise WireError(ErrorCode.UNSUPPORTED_VERSION, f"version {version} not supported")
        try:
            role = Role(ctl.str_field("role", 16))
        except ValueError as exc:
            raise WireError(ErrorCode.PROTOCOL_ERROR, "HELLO names an unknown role") from exc
        if (role is Role.ROUTER) != (self.peer_kind == "router"):
            raise WireError(
                ErrorCode.NOT_AUTHORIZED,
                f"a {self.peer_kind} certificate cannot speak as {role.value}",
            )
        if self.opener and role is not Role.ROUTER:
            raise WireError(ErrorCode.PROTOCOL_ERROR, "links are opened towards routers only")
        name = ctl.fields.get("name")
        self.peer_role = role
        self.peer_name = name[:256] if isinstance(name, str) else ""
        if not self.opener:
            self._send_hello()
        self._move(LinkState.READY)
        self._events.append(Ready(role, self.peer_name))

    def _send_hello(self) -> None:
        fields = {"v": PROTOCOL_VERSION, "role": self.role.value, "name": self.name}
        self.send(FrameType.HELLO, 0, encode_control(fields))

    def _ping(self, mono: float) -> None:
        self._ping_seq += 1
        self._ping_sent_at[self._ping_seq] = mono
        if len(self._ping_sent_at) > 4:  # unanswered pings: keep only the newest few
            del self._ping_sent_at[min(self._ping_sent_at)]
        self.pings_sent += 1
        self._next_ping = mono + self.timers.ping_interval
        self.send(FrameType.PING, 0, _PING.pack(self._ping_seq))

    def _pong(self, frame: Frame, now: Instant) -> None:
        if len(frame.payload) != _PING.size:
            return  # not an answer to one of our pings (peers may ping with other payloads)
        sent = self._ping_sent_at.pop(_PING.unpack(frame.payload)[0], None)
        if sent is not None:
            self.pongs_received += 1
            self.rtt = now.mono - sent

    def _move(self, state: LinkState) -> None:
        if state not in _MOVES[self.state]:
            raise AssertionError(f"link cannot move from {self.state} to {state}")
        self.state = state
