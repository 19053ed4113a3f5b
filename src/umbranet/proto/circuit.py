"""One end of a circuit, as a sans-IO state machine: handshake, sealing, flow control, close.

Rules of this file:
- States and their legal moves are the table `_MOVES`; every change goes through `_move`.
- Inputs: `handle_frame(frame, now)`, `handle_timer(now)`, `write(data)`, `write_eof()`,
  `take(n)`, `reset(...)`. Outputs: `poll_transmit()` (buffers to send on the link, in
  order), `poll_event()` and `poll_timeout()` (when the send key must move on).
- A misbehaving peer never raises out of here: the circuit resets with a code and reason,
  sends RESET to the router, and reports `Closed`.
- Half-close: each direction ends with a sealed DATA frame flagged FIN; the circuit is
  finished cleanly when both directions have ended. Only that sealed FIN is an end of data.
- Resume (`proto/resume.py`): a circuit whose path failed (a RESET `peer_gone`,
  `host_gone`, `shutting_down`, `overloaded`, or its link lost) is DETACHED, not closed: the
  session keeps its keys, its unacknowledged bytes (`proto/retain.py`) and what arrived. The
  dialer moves it to a new circuit id (RESUMING), the host accepts the move (REATTACHING);
  after the authenticated exchange both send from the peer's sealed `received` offset under
  fresh keys, so every byte arrives once, in order. `epoch` counts moves: a link holding the
  circuit under an older epoch holds a stale entry.
- Aborts: a RESET frame is not authenticated (any router on the path can send one), so it
  ends the circuit as `Closed(authenticated=False)` whatever code it names, and an
  application never mistakes it for a clean end. An endpoint that aborts sends, when it
  has the credit, a sealed DATA frame flagged ABORT carrying the code and reason before its
  RESET: the peer reports that one as `Closed(authenticated=True)`.
"""

from __future__ import annotations

import struct
from collections import deque
from datetime import datetime

from umbranet.proto.circuit_moves import CircuitMoves, DeferredOpen
from umbranet.proto.circuit_state import (
    MOVES,
    PATH_FAILURES,
    RETRY_RESUME,
    Closed,
    Detached,
    Event,
    Opened,
    Readable,
    Resumed,
    State,
    Writable,
)
from umbranet.proto.e2e import (
    DialerHandshake,
    E2EError,
    E2ESession,
    HostHandshake,
    PeerIdentity,
    RekeyLimits,
)
from umbranet.proto.flow import DEFAULT_WINDOW, MAX_WINDOW, MIN_WINDOW, ReceiveWindow, SendCredit
from umbranet.proto.resume import (
    Confirm,
    Open,
    OpenOk,
    Resume,
    ResumeError,
    ResumeOk,
    ResumeSecret,
)
from umbranet.proto.retain import Retained
from umbranet.proto.text import printable
from umbranet.wire import ErrorCode, Flag, Frame, FrameType, decode_control, encode_control
from umbranet.wire.control import decode_error, encode_error, frame_control
from umbranet.wire.frames import (
    MAX_DATA_PAYLOAD,
    MAX_INSTANCE,
    WireError,
    encode_frame,
    encode_header,
)

__all__ = [
    "CHUNK",
    "PATH_FAILURES",
    "TAG",
    "Circuit",
    "Closed",
    "Detached",
    "Event",
    "Opened",
    "Readable",
    "Resumed",
    "State",
    "Writable",
]

CHUNK = 64 * 1024
TAG = 16
_CREDIT = struct.Struct("!I")
# Below this much credit, wait for more rather than send a sliver of a frame.
_MIN_SEND = 4096
# A plain int: `int & IntFlag` runs IntFlag's Python-level __rand__ (~0.5 us per frame).
_FIN = int(Flag.FIN)
_ABORT = int(Flag.ABORT)
_FIN_OR_ABORT = _FIN | _ABORT
# Enum members as module constants: the interpreter specialises a global lookup, not an
# attribute of a class (these are read for every frame).
_OPEN, _CLOSED = State.OPEN, State.CLOSED
_DATA, _CREDIT_FRAME = int(FrameType.DATA), int(FrameType.CREDIT)

# An abort's reason is cut so the sealed frame stays small (it needs credit to leave).
_ABORT_REASON = 200


# Field-less and frozen, so one instance each serves every circuit (no allocation per frame).
_READABLE = Readable()
_WRITABLE = Writable()


class Circuit(CircuitMoves):
    """One end of one circuit. Build with `Circuit.dial` or `Circuit.accept`."""

    __slots__ = ()  # `CircuitMoves` names every attribute of a circuit

    def __init__(self, circuit_id: int, state: State, window: int) -> None:
        self.id = circuit_id
        self.state = state
        self.peer: PeerIdentity | None = None
        self.error: Closed | None = None
        self.local_fin = False  # we sent FIN
        self.remote_fin = False  # the peer sent FIN
        self._fin_queued = False
        self._session: E2ESession | None = None
        self._dialer: DialerHandshake | None = None
        self._host: HostHandshake | None = None
        self._expected_dialer: str | None = None
        self._credit = SendCredit(0)
        self._window = ReceiveWindow(window)
        self._inbound: deque[bytes] = deque()
        # Plaintext bytes waiting for `take` (`_unread` included), and application bytes
        # queued but not yet sealed: plain attributes, not properties, as streams read them
        # on every read and write; only this class writes them.
        self.readable_bytes = 0
        self._unread = b""  # pushed back by the reader: its credit was already returned
        self._outbound: deque[bytes] = deque()
        self.unsent_bytes = 0
        self._transmit: list[bytes] = []
        self._events: deque[Event] = deque()
        self.service = ""
        self.port: int | None = None  # the service port a dialer asked for (its tickets')
        self.is_dialer = state is State.DIALING
        self.epoch = 0  # moves to another circuit so far
        self.resumes = 0
        self.owner: object = None  # the shell's stream, found again after a move
        self._limits: RekeyLimits | None = None
        self._resume: ResumeSecret | None = None
        self._retained = Retained()
        self._received = 0  # plaintext bytes of the peer's direction held (read or not)
        self._gen = 0  # dialer: resume attempts made; host: the highest generation seen
        self._attempt: tuple[Resume, ResumeOk | None, int] | None = None
        self._detached: Detached | None = None
        self._opening: tuple[Open, ResumeSecret] | None = None  # dialer: OPEN sent
        self._confirming: tuple[ResumeSecret, bytes, bytes] | None = None  # host: wait CONFIRM
        self.in_session = False  # opened inside an existing session (no Noise handshake)
        self.peer_instance = ""  # dialer: the host process holding the session (its ACCEPT's)
        self.deferred: DeferredOpen | None = None  # dialer: the OPEN, not built yet
        self._refused_bytes: tuple[bytes, bool] | None = None  # see `unopened`

    # -- construction -------------------------------------------------------------------

    @classmethod
    def dial(
        cls,
        circuit_id: int,
        service: str,
        handshake: DialerHandshake,
        window: int = DEFAULT_WINDOW,
    ) -> Circuit:
        """A dialer's circuit; its DIAL frame is queued for transmission at once."""
        circuit = cls(circuit_id, State.DIALING, window)
        circuit._dialer = handshake
        circuit.service = service
        circuit.port = handshake.port
        circuit._limits = handshake.limits
        fields = {"ticket": handshake.ticket, "service": service, "window": window}
        circuit._transmit.append(
            encode_frame(FrameType.DIAL, circuit_id, encode_control(fields, handshake.start()))
        )
        return circuit

    @classmethod
    def accept(
        cls,
        circuit_id: int,
        connect: Frame,
        handshake: HostHandshake,
        window: int = DEFAULT_WINDOW,
        instance: str = "",
    ) -> Circuit:
        """A host's circuit from a CONNECT frame; ACCEPT (or RESET) is queued at once, naming
        `instance` (this host process, a routing hint for later opens) when given."""
        circuit = cls(circuit_id, State.ACCEPTING, window)
        circuit._host = handshake
        circuit.service = handshake.service
        circuit._limits = handshake.limits
        try:
            ctl = frame_control(connect)
            peer_window = ctl.int_field("window", MIN_WINDOW, MAX_WINDOW)
            circuit._expected_dialer = ctl.str_field("dialer", 2048)
            answer = handshake.answer(ctl.blob)
        except (WireError, E2EError) as exc:
            circuit.reset(exc.code, exc.reason)
            return circuit
        circuit._credit = SendCredit(peer_window)
        fields: dict[str, object] = {"window": window}
        if instance:
            fields["instance"] = instance
        circuit._transmit.append(
            encode_frame(FrameType.ACCEPT, circuit_id, encode_control(fields, answer))
        )
        return circuit

    @classmethod
    def open_in_session(
        cls,
        circuit_id: int,
        service: str,
        *,
        secret: ResumeSecret,
        peer: PeerIdentity,
        stream: int,
        ticket: str,
        nonce: bytes,
        early: bytes = b"",
        window: int = DEFAULT_WINDOW,
        port: int | None = None,
        limits: RekeyLimits | None = None,
        deferred: bool = False,
        instance: str = "",
    ) -> Circuit:
        """A dialer's circuit opened inside the session with `peer` (no Noise handshake):
        DIAL carries OPEN and `early` (sealed) at once; see `proto/resume.py`.

        `deferred`: the DIAL waits for the first `poll_transmit`, and what the application
        wrote by then (up to EARLY_DATA_MAX) rides with it as early data: a stream whose
        first write follows its dial gets its answer in one round trip (0-RTT)."""
        circuit = cls(circuit_id, State.DIALING, window)
        circuit.service, circuit.port, circuit.peer = service, port, peer
        circuit._limits = limits
        circuit.in_session = True
        circuit.peer_instance = instance
        # `host` and `instance` (the host process, from its ACCEPT) let the routers deliver
        # the open to the process holding the session (any other would refuse it); they see
        # which host a circuit reaches anyway.
        fields: dict[str, object] = {"ticket": ticket, "service": service, "window": window}
        fields["host"] = peer.spiffe_id
        if instance:
            fields["instance"] = instance
        circuit.deferred = DeferredOpen(secret, stream, nonce, port, fields)
        if early:
            circuit.write(early)
        if not deferred:
            circuit.release_open()
        return circuit

    @classmethod
    def accept_in_session(
        cls,
        circuit_id: int,
        service: str,
        *,
        secret: ResumeSecret,
        opening: Open,
        early: bytes,
        peer: PeerIdentity,
        peer_window: int,
        nonce: bytes,
        now: datetime,
        window: int = DEFAULT_WINDOW,
        limits: RekeyLimits | None = None,
    ) -> Circuit:
        """A host's circuit for a checked OPEN: open at once (its early data readable);
        the dialer's CONFIRM follows, as the HANDSHAKE routers wait for."""
        circuit = cls(circuit_id, State.ACCEPTING, window)
        circuit.service, circuit.peer, circuit._limits = service, peer, limits
        circuit.in_session = True
        ok = OpenOk.build(secret, opening, nonce)
        circuit._transmit.append(
            encode_frame(FrameType.ACCEPT, circuit_id, encode_control({"window": window}, ok.raw))
        )
        stream_secret = opening.stream_secret(secret, ok.raw)
        circuit._start_session(stream_secret, opening.header + ok.raw, peer_window, now)
        circuit._confirming = (secret, opening.header, ok.raw)
        if early:
            # Not DATA: it used no window, so taking it returns no credit.
            circuit._unread = early
            circuit.readable_bytes = circuit._received = len(early)
        circuit._move(State.OPEN)
        circuit._events.append(Opened(peer))
        return circuit

    @classmethod
    def refused(cls, circuit_id: int, code: ErrorCode, reason: str) -> Circuit:
        """A host's circuit that only refuses its CONNECT (RESET queued at once)."""
        circuit = cls(circuit_id, State.ACCEPTING, DEFAULT_WINDOW)
        circuit.reset(code, reason)
        return circuit

    # -- inputs -------------------------------------------------------------------------

    def handle_frame(self, frame: Frame, now: datetime) -> None:
        """Feed one frame addressed to this circuit."""
        if self.state is _CLOSED:
            return
        if self._session is not None:
            self._session.tick(now)
        try:
            ftype = frame.type
            if ftype == _DATA:
                self._on_data(frame)
            elif ftype == _CREDIT_FRAME:
                self._on_credit(frame)
            elif ftype == FrameType.ACCEPT and self.state is State.DIALING and not self.in_session:
                self._on_accept(frame, now)
            elif ftype == FrameType.HANDSHAKE and self.state is State.ACCEPTING:
                self._on_handshake(frame, now)
            elif ftype == FrameType.ACCEPT and self._opening is not None:
                self._on_open_ok(frame, now)
            elif ftype == FrameType.HANDSHAKE and self._confirming is not None:
                secret, request, answer = self._confirming
                Confirm.verify(frame.payload, secret, request, answer)
                self._confirming = None
            elif ftype == FrameType.ACCEPT and self.state is State.RESUMING:
                self._on_resume_ok(frame, now)
            elif ftype == FrameType.HANDSHAKE and self.state is State.REATTACHING:
                self._on_confirm(frame, now)
            elif ftype == FrameType.RESET:
                code, reason = decode_error(frame.payload)
                retry = RETRY_RESUME if self.state is State.RESUMING else PATH_FAILURES
                if code in retry and self.resumable:
                    self.detach(code, reason)
                    return
                self._finish(Closed(code, printable(reason), by_peer=True, authenticated=False))
            else:
                raise WireError(
                    ErrorCode.PROTOCOL_ERROR,
                    f"{FrameType(ftype).name} not expected in state {self.state.value}",
                )
        except (WireError, E2EError, ResumeError) as exc:
            self.reset(exc.code, exc.reason)

    def write(self, data: bytes) -> None:
        """Queue application bytes; they leave as credit allows (see `poll_transmit`)."""
        if self.local_fin or self._fin_queued or self.state is _CLOSED:
            raise ConnectionError("stream is closed for writing")
        if data:
            self._outbound.append(data)
            self.unsent_bytes += len(data)
            self._pump()

    def write_eof(self) -> None:
        """End our direction after the queued bytes (half-close)."""
        if self.local_fin or self._fin_queued or self.state is _CLOSED:
            return
        self._fin_queued = True
        self._pump()

    def take(self, limit: int) -> bytes:
        """Up to `limit` plaintext bytes the peer sent, returning credit as they go."""
        if limit <= 0:
            return b""
        if self._unread:
            chunk, self._unread = self._unread[:limit], self._unread[limit:]
            self.readable_bytes -= len(chunk)
            return chunk
        if not self._inbound:
            return b""
        chunk = self._inbound[0]
        if len(chunk) <= limit:
            self._inbound.popleft()
            credit = len(chunk) + TAG
        else:
            self._inbound[0] = chunk[limit:]
            chunk = chunk[:limit]
            credit = limit
        self.readable_bytes -= len(chunk)
        self._return_credit(credit)
        return chunk

    def push_back(self, data: bytes) -> None:
        """Return bytes taken but not used (a reader that over-read).

        Their credit went back when they were taken, so taking them again returns none:
        crediting twice would let the sender overrun the window, and routers reset a
        circuit whose receiver returns more credit than it was sent.
        """
        if data:
            self._unread = data + self._unread
            self.readable_bytes += len(data)

    def reset(self, code: ErrorCode, reason: str) -> None:
        """Abort the circuit: a sealed abort (when credit allows) and RESET to the peer;
        nothing more is sent or delivered."""
        if self.state is _CLOSED:
            return
        # Reasons often quote what a peer or router sent (names, fields): never raw.
        reason = printable(reason)
        if self.deferred is not None:
            self.deferred = None  # never sent: nobody on the path knows this circuit
        else:
            self._seal_abort(code, reason)
            self._transmit.append(
                encode_frame(FrameType.RESET, self.id, encode_error(code, reason))
            )
        self._finish(Closed(code, reason, by_peer=False))

    def handle_timer(self, now: datetime) -> None:
        """Time passed: a send key past its age moves on before the next frame is sealed."""
        if self._session is not None and self.state is _OPEN:
            self._session.tick(now)

    def poll_timeout(self) -> tuple[datetime, str] | None:
        """When `handle_timer` is next due, and why; None when no timer is needed."""
        if self._session is None or self.state is not _OPEN or self.local_fin:
            return None
        return self._session.rekey_deadline, "rekey"

    # -- outputs ------------------------------------------------------------------------

    def poll_transmit(self) -> list[bytes]:
        """Buffers to write on the link, in order (taken: a second call returns [])."""
        if self.deferred is not None:
            self.release_open()
        out, self._transmit = self._transmit, []
        return out

    def poll_event(self) -> Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    @property
    def at_eof(self) -> bool:
        """The peer ended its direction and everything it sent was taken."""
        return self.readable_bytes == 0 and (self.remote_fin or self.state is _CLOSED)

    # -- internals ----------------------------------------------------------------------

    def _move(self, target: State) -> None:
        if target not in MOVES[self.state]:
            raise WireError(
                ErrorCode.PROTOCOL_ERROR, f"illegal move {self.state.value} -> {target.value}"
            )
        self.state = target

    def _on_accept(self, frame: Frame, now: datetime) -> None:
        assert self._dialer is not None
        ctl = decode_control(frame.payload)
        peer_window = ctl.int_field("window", MIN_WINDOW, MAX_WINDOW)
        if "instance" in ctl.fields:
            self.peer_instance = ctl.str_field("instance", MAX_INSTANCE)
        final, self._session, self.peer = self._dialer.finish(ctl.blob, now)
        self._resume = self._session.resume
        self._dialer = None
        self._credit = SendCredit(peer_window)
        self._transmit.append(encode_frame(FrameType.HANDSHAKE, self.id, final))
        self._move(State.OPEN)
        self._events.append(Opened(self.peer))
        self._pump()

    def _on_handshake(self, frame: Frame, now: datetime) -> None:
        assert self._host is not None
        try:
            self._session, self.peer = self._host.finish(
                bytes(frame.payload), now, self._expected_dialer
            )
        except E2EError as exc:
            # The dialer holds the keys already (its side finished with message 3): seal
            # the refusal so it is told apart from a RESET a router made up.
            self._session = exc.session
            raise
        self._resume = self._session.resume
        self._host = None
        self._move(State.OPEN)
        self._events.append(Opened(self.peer))
        self._pump()

    def _on_data(self, frame: Frame) -> None:
        if self.state is not _OPEN or self._session is None or self.remote_fin:
            raise WireError(ErrorCode.PROTOCOL_ERROR, "DATA outside an open direction")
        size = len(frame.payload)
        if size > MAX_DATA_PAYLOAD:
            raise WireError(ErrorCode.FRAME_TOO_LARGE, f"DATA of {size} bytes > {MAX_DATA_PAYLOAD}")
        if not self._window.receive(size):
            raise WireError(ErrorCode.FLOW_CONTROL_ERROR, "peer sent beyond its window")
        flags = frame.flags
        plaintext = self._session.open(frame.payload, flags)
        # One test for the usual frame (neither flag): `&` is not specialised per type.
        fin = False
        if flags & _FIN_OR_ABORT:
            if flags & _ABORT:
                self._on_abort(plaintext, flags)
                return
            fin = True
        if plaintext:
            self._inbound.append(plaintext)
            held = len(plaintext)
            self.readable_bytes += held
            self._received += held
        else:
            self._return_credit(size)
        if fin:
            self.remote_fin = True
        self._events.append(_READABLE)
        if fin and self.local_fin:
            self._finish(Closed(ErrorCode.NO_ERROR, "both directions ended", by_peer=True))

    def _on_abort(self, plaintext: bytes, flags: int) -> None:
        """The peer's sealed abort: its own code and reason, proven by the session key."""
        if flags & _FIN:
            raise WireError(ErrorCode.PROTOCOL_ERROR, "DATA flagged both ABORT and FIN")
        code, reason = decode_error(plaintext)
        self._finish(Closed(code, printable(reason), by_peer=True, authenticated=True))

    def _seal_abort(self, code: ErrorCode, reason: str) -> None:
        """Tell the peer, sealed, why we abort; skipped without credit or after our FIN
        (routers refuse DATA past FIN), so the peer sees only the unauthenticated RESET."""
        session = self._session
        if session is None or self.state is _CLOSED or self.local_fin:
            return
        body = encode_error(code, reason[:_ABORT_REASON])
        if self._credit.available < len(body) + TAG:
            return
        flags, sealed = session.seal(body, _ABORT)
        self._credit.consume(len(sealed))
        self._transmit.append(encode_header(_DATA, self.id, len(sealed), flags))
        self._transmit.append(sealed)

    def _on_credit(self, frame: Frame) -> None:
        if len(frame.payload) != _CREDIT.size:
            raise WireError(ErrorCode.PROTOCOL_ERROR, "CREDIT payload must be 4 bytes")
        (amount,) = _CREDIT.unpack(frame.payload)
        if not self._credit.grant(amount):
            raise WireError(ErrorCode.FLOW_CONTROL_ERROR, "credit beyond the largest window")
        self._retained.credited(amount)
        self._events.append(_WRITABLE)
        self._pump()

    def _return_credit(self, nbytes: int) -> None:
        credit = self._window.consume(nbytes)
        if credit and self.state is _OPEN and not self.remote_fin:
            self._transmit.append(encode_header(_CREDIT_FRAME, self.id, 4) + _CREDIT.pack(credit))

    def _pump(self) -> None:
        """Seal queued bytes into DATA frames while credit lasts; then FIN if asked."""
        if self.state is not _OPEN or self._session is None:
            return
        seal = self._session.seal
        keep = self._retained.sent_frame
        while self._outbound:
            room = min(self._credit.available - TAG, CHUNK)
            if room < min(_MIN_SEND, self.unsent_bytes):
                return
            piece = self._next_piece(room)
            flags, sealed = seal(piece)
            keep(len(sealed), piece)
            self._credit.consume(len(sealed))
            self._transmit.append(encode_header(_DATA, self.id, len(sealed), flags))
            self._transmit.append(sealed)
        if self._fin_queued and not self.local_fin and self._credit.available >= TAG:
            flags, sealed = seal(b"", _FIN)
            keep(len(sealed), b"", fin=True)
            self._credit.consume(len(sealed))
            self._transmit.append(encode_header(_DATA, self.id, len(sealed), flags))
            self._transmit.append(sealed)
            self.local_fin = True
            if self.remote_fin:
                self._finish(Closed(ErrorCode.NO_ERROR, "both directions ended", by_peer=False))

    def _next_piece(self, room: int) -> bytes | memoryview:
        """Up to `room` bytes from the head of the outbound queue, copying only to join."""
        first = self._outbound[0]
        if len(first) > room:
            self._outbound[0] = first[room:]
            self.unsent_bytes -= room
            return memoryview(first)[:room]
        parts = [self._outbound.popleft()]
        size = len(first)
        while self._outbound and size + len(self._outbound[0]) <= room:
            nxt = self._outbound.popleft()
            parts.append(nxt)
            size += len(nxt)
        self.unsent_bytes -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _finish(self, closed: Closed) -> None:
        if self._opening is not None:  # refused in-session open: its bytes may go again
            self._keep_unopened()
        self.state = _CLOSED
        self.error = closed
        self._outbound.clear()
        self.unsent_bytes = 0
        self._retained = Retained(self._retained.sent)  # nothing is resent any more
        self._events.append(closed)
