"""An endpoint's resumable sessions across all its router links, sans-IO.

A stream's session is not tied to one router link: when its path fails the circuit leaves
its link (`SessionDetached`) and waits here; the dialer's shell asks `due()` which sessions
to move and puts each on another link (`EndpointLink.resume`); the host's shell routes every
CONNECT of its bindings through `accept`, which tells a RESUME from a new dial and checks it
(unknown session, forged, replayed, the ticket of the new circuit) before the session moves.
Streams inside a session (0-RTT): once a dialer and a host share a session, later streams
between them open with an OPEN (`proto/resume.py`) keyed from it, the first data riding
along. The dialer's side keeps one session per service (`key_for`, `next_stream`); the
host's `accept` checks an OPEN like a RESUME: a session it holds, its mac, a stream number
never seen (a router replaying an OPEN gets `replayed`, counted), and the new circuit's
ticket for the service and port (the router checked it too). A refused OPEN ends that dial
with the code; the shell forgets the session (`forget`) and dials again with Noise.

A session that finds no new path within `deadline` ends with `resume_timeout`: an error the
application sees, never a silent end. A deadline of 0 turns moving off: a failed path ends
the stream at once with the code the path failure came with (`peer_gone`, ...).

Rules of this file:
- Inputs: `opened`, `closed`, `detached`, `resumed`, `accept`, `handle_timeout(now)`. Outputs:
  `due(now)`, `poll_timeout()`, `nonce()`, `statistics()`.
- Every refused resume is counted under its code (`resume_refused`, `replayed`, a ticket
  code) and answered with a RESET; the session it named is untouched.
"""

from __future__ import annotations

import functools
import heapq
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from umbranet.clock import Deadline, Instant
from umbranet.proto.circuit import Circuit, State
from umbranet.proto.e2e import E2EError, HostHandshake, PeerIdentity
from umbranet.proto.flow import DEFAULT_WINDOW, MAX_WINDOW, MIN_WINDOW
from umbranet.proto.resume import (
    NONCE_SIZE,
    Open,
    Resume,
    ResumeError,
    ResumeSecret,
    is_open_blob,
    is_resume_blob,
)
from umbranet.wire import ErrorCode, Frame, WireError
from umbranet.wire.control import ControlPayload, frame_control

__all__ = ["DEFAULT_RESUME_DEADLINE", "SessionKey", "Sessions"]

DEFAULT_RESUME_DEADLINE = 30.0
DEFAULT_RETRY = 0.5
# Sessions remembered for resumes; the oldest closed ones go first (closed ones are dropped
# as soon as they are seen closed, so this bounds only open sessions).
DEFAULT_MAX_SESSIONS = 65536


# Closed streams are dropped from the table on a sweep every this many opens.
_SWEEP_EVERY = 256
# Stream numbers a host remembers per session against replayed OPENs; older ones are below
# the floor and refused outright (a dialer that late dials again with Noise).
REPLAY_WINDOW = 4096


@dataclass(slots=True)
class SessionKey:
    """A session two endpoints share, to open more streams in: its secret and the peer it
    proved. The dialer counts its streams; the host remembers which it has seen."""

    secret: ResumeSecret
    peer: PeerIdentity
    instance: str = ""  # dialer: the host process holding it, named by every OPEN
    next_stream: int = 0
    floor: int = 0
    seen: set[int] = field(default_factory=set)
    _order: list[int] = field(default_factory=list)  # `seen` as a min-heap

    def fresh(self, stream: int) -> bool:
        return stream > self.floor and stream not in self.seen

    def mark(self, stream: int) -> None:
        self.seen.add(stream)
        heapq.heappush(self._order, stream)
        if len(self.seen) > REPLAY_WINDOW:  # a heap: min(seen) per open was O(window)
            oldest = heapq.heappop(self._order)
            self.seen.discard(oldest)
            self.floor = max(self.floor, oldest)


class _Waiting:
    __slots__ = ("circuit", "deadline", "next_try")

    def __init__(self, circuit: Circuit, deadline: float, next_try: float) -> None:
        self.circuit = circuit
        self.deadline = deadline
        self.next_try = next_try


class Sessions:
    """The table of an endpoint's sessions that may move. See the module docstring."""

    def __init__(
        self,
        *,
        deadline: float = DEFAULT_RESUME_DEADLINE,
        retry: float = DEFAULT_RETRY,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        entropy: Callable[[int], bytes] = secrets.token_bytes,
        instance: str = "",
    ) -> None:
        self.deadline = deadline
        # Host: this process's instance id, sent on BIND and in each new session's ACCEPT,
        # so in-session opens reach this process and no other of its identity ("": none).
        self.instance = instance
        self.retry = retry
        self.max_sessions = max_sessions
        self._entropy = entropy
        self._by_sid: dict[bytes, Circuit] = {}
        self._opened = 0
        self._keys: dict[bytes, SessionKey] = {}  # host: sessions to open streams in, by sid
        self._dial_keys: dict[str, SessionKey] = {}  # dialer: one session per service
        self._waiting: dict[int, _Waiting] = {}  # id(circuit) -> its wait
        self.counters: dict[str, int] = {}

    # -- inputs -------------------------------------------------------------------------

    def opened(self, circuit: Circuit) -> None:
        """A stream opened: its session may move later."""
        sid = circuit.session_id
        if sid is None:
            return
        self._opened += 1
        if self._opened % _SWEEP_EVERY == 0 or len(self._by_sid) >= self.max_sessions:
            self._forget_closed()  # closed streams hold buffers: let them go
        if len(self._by_sid) >= self.max_sessions:
            self._count("sessions_not_resumable")
            return
        self._by_sid[sid] = circuit
        secret, peer = circuit.resume_secret, circuit.peer
        if circuit.in_session or secret is None or peer is None:
            return
        key = SessionKey(secret, peer, circuit.peer_instance)
        if circuit.is_dialer:
            self._dial_keys[circuit.service] = key
            return
        while len(self._keys) >= self.max_sessions:
            del self._keys[next(iter(self._keys))]  # the oldest session goes first
        self._keys[sid] = key

    def closed(self, circuit: Circuit) -> None:
        """A stream ended: its session can no longer move, so the table lets it go now
        rather than at the next sweep (which freed 256 streams' buffers at once)."""
        sid = circuit.session_id
        if sid is not None and circuit.state is State.CLOSED and self._by_sid.get(sid) is circuit:
            del self._by_sid[sid]

    def key_for(self, service: str) -> SessionKey | None:
        """(Dialer) The session to open a stream to `service` in, if there is one."""
        return self._dial_keys.get(service)

    def next_stream(self, key: SessionKey) -> int:
        key.next_stream += 1
        return key.next_stream

    def opener(
        self,
        key: SessionKey,
        service: str,
        ticket: str,
        *,
        early: bytes = b"",
        port: int | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> Callable[[int], Circuit]:
        """(Dialer) What builds the next stream's circuit inside `key`'s session, given its
        circuit id: a deferred OPEN (the first writes ride with it) numbered after the
        session's last stream."""
        return functools.partial(
            Circuit.open_in_session,
            service=service,
            secret=key.secret,
            peer=key.peer,
            stream=self.next_stream(key),
            ticket=ticket,
            nonce=self.nonce(),
            early=early,
            port=port,
            window=window,
            deferred=True,
            instance=key.instance,
        )

    def forget(self, service: str) -> None:
        """(Dialer) The host refused an OPEN in this session: the next dial uses Noise."""
        if self._dial_keys.pop(service, None) is not None:
            self._count("session_keys_dropped")

    def detached(self, circuit: Circuit, now: Instant) -> None:
        """Its path failed: it waits for a new circuit until the deadline (kept from the
        first failure when an attempt fails too)."""
        if self.deadline <= 0:
            circuit.give_up()  # moving is off: the path failure ends the stream, as it says
            self._count("sessions_not_resumed")
            return
        waiting = self._waiting.get(id(circuit))
        if waiting is None:
            self._waiting[id(circuit)] = _Waiting(circuit, now.later(self.deadline), now.mono)
            self._count("sessions_detached")
        else:
            waiting.next_try = min(waiting.next_try, now.later(self.retry))

    def resumed(self, circuit: Circuit) -> None:
        if self._waiting.pop(id(circuit), None) is not None or circuit.resumes:
            self._count("sessions_resumed")

    def accept(
        self, circuit_id: int, connect: Frame, handshake: HostHandshake, window: int, now: Instant
    ) -> Circuit:
        """(Host) The circuit for a CONNECT: a new stream, or a session moved here by a
        checked RESUME, or a throwaway circuit that refuses it (RESET queued)."""
        try:
            ctl = frame_control(connect)
            blob = ctl.blob
        except WireError:
            return Circuit.accept(circuit_id, connect, handshake, window, self.instance)
        if is_open_blob(blob):
            return self._accept_open(circuit_id, ctl, handshake, window, now)
        if not is_resume_blob(blob):
            return Circuit.accept(circuit_id, connect, handshake, window, self.instance)
        try:
            resume = Resume.parse(blob)
            circuit = self._by_sid.get(resume.sid)
            if circuit is None or circuit.state is State.CLOSED or circuit.peer is None:
                raise ResumeError(ErrorCode.RESUME_REFUSED, "no such session here")
            circuit.check_resume(resume)
            if circuit.service != handshake.service:
                # Else a grant to another service would keep this stream alive.
                raise ResumeError(ErrorCode.RESUME_REFUSED, "the session serves another service")
            # The new circuit's ticket, as for a new stream: the grant may have ended.
            handshake.check_ticket(ctl.str_field("ticket"), circuit.peer, now.wall)
            peer_window = ctl.int_field("window", MIN_WINDOW, MAX_WINDOW)
            circuit.resume_accept(circuit_id, resume, peer_window, self.nonce())
        except (ResumeError, E2EError, WireError) as exc:
            self._count(exc.code.code)
            return Circuit.refused(circuit_id, exc.code, exc.reason)
        self._count("resumes_accepted")
        return circuit

    def _accept_open(
        self,
        circuit_id: int,
        ctl: ControlPayload,
        handshake: HostHandshake,
        window: int,
        now: Instant,
    ) -> Circuit:
        """(Host) An OPEN: a new stream inside a session, checked as a new dial is."""
        try:
            opening = Open.parse(ctl.blob)
            key = self._keys.get(opening.sid)
            if key is None:
                raise ResumeError(ErrorCode.RESUME_REFUSED, "no such session here")
            early = opening.verify(key.secret)
            if not key.fresh(opening.stream):
                raise ResumeError(
                    ErrorCode.REPLAYED, f"stream {opening.stream} of this session was opened"
                )
            key.mark(opening.stream)
            # Built field by field: `dataclasses.replace` costs several µs, per stream.
            known = key.peer
            asked = PeerIdentity(
                name=known.name,
                spiffe_id=known.spiffe_id,
                attributes=known.attributes,
                ticket_id=known.ticket_id,
                port=opening.port,
            )
            ticket = handshake.check_ticket(ctl.str_field("ticket"), asked, now.wall)
            peer_window = ctl.int_field("window", MIN_WINDOW, MAX_WINDOW)
        except (ResumeError, E2EError, WireError) as exc:
            self._count(exc.code.code)
            return Circuit.refused(circuit_id, exc.code, exc.reason)
        peer = PeerIdentity(
            name=key.peer.name,
            spiffe_id=key.peer.spiffe_id,
            attributes=ticket.attributes,
            ticket_id=ticket.id,
            port=ticket.port,
        )
        self._count("streams_opened_in_session")
        if early:
            self._count("streams_with_early_data")  # 0-RTT: answered in the first flight
        return Circuit.accept_in_session(
            circuit_id,
            handshake.service,
            secret=key.secret,
            opening=opening,
            early=early,
            peer=peer,
            peer_window=peer_window,
            nonce=self.nonce(),
            now=now.wall,
            window=window,
            limits=handshake.limits,
        )

    def handle_timeout(self, now: Instant) -> list[Circuit]:
        """Sessions past their deadline end with `resume_timeout`; returns them."""
        expired: list[Circuit] = []
        for key, waiting in list(self._waiting.items()):
            circuit = waiting.circuit
            if circuit.state is State.CLOSED or circuit.state is State.OPEN:
                del self._waiting[key]
                continue
            if waiting.deadline <= now.mono:
                del self._waiting[key]
                circuit.reset(
                    ErrorCode.RESUME_TIMEOUT,
                    f"no path to the peer came back within {self.deadline:g}s",
                )
                circuit.poll_transmit()  # its old circuit is gone: nowhere to send
                self._count("resume_timeout")
                expired.append(circuit)
        self._forget_closed()
        return expired

    # -- outputs ------------------------------------------------------------------------

    def due(self, now: Instant) -> list[Circuit]:
        """(Dialer) Detached sessions to put on a new circuit now."""
        ready: list[Circuit] = []
        for waiting in self._waiting.values():
            circuit = waiting.circuit
            if (
                circuit.is_dialer
                and circuit.state is State.DETACHED
                and waiting.next_try <= now.mono
            ):
                waiting.next_try = now.later(self.retry)
                ready.append(circuit)
        return ready

    def poll_timeout(self) -> Deadline | None:
        best: Deadline | None = None
        for waiting in self._waiting.values():
            if waiting.circuit.is_dialer and waiting.next_try < waiting.deadline:
                at, why = waiting.next_try, "resume retry"
            else:
                at, why = waiting.deadline, "resume deadline"
            if best is None or at < best.at:
                best = Deadline(at, why)
        return best

    def nonce(self) -> bytes:
        return self._entropy(NONCE_SIZE)

    @property
    def waiting(self) -> int:
        """Sessions waiting for a new path."""
        return len(self._waiting)

    def statistics(self) -> dict[str, int]:
        return {"sessions": len(self._by_sid), "waiting": len(self._waiting), **self.counters}

    # -- internals ----------------------------------------------------------------------

    def _forget_closed(self) -> None:
        for sid, circuit in list(self._by_sid.items()):
            if circuit.state is State.CLOSED:
                del self._by_sid[sid]

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1
