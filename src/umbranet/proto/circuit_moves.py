"""Moving a circuit's session: resume on a new circuit after a path failure, and the key
schedule shared with streams opened inside a session (see `proto/resume.py`). A mixin of
`Circuit`, kept apart so each file reads in one sitting; its rules are `circuit.py`'s."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime

from umbranet.proto.circuit_state import MOVING, Closed, Detached, Event, Opened, Resumed, State
from umbranet.proto.e2e import E2ESession, PeerIdentity, RekeyLimits
from umbranet.proto.flow import MAX_WINDOW, MIN_WINDOW, ReceiveWindow, SendCredit
from umbranet.proto.noise import CipherState
from umbranet.proto.resume import (
    EARLY_DATA_MAX,
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
from umbranet.wire import ErrorCode, Frame, FrameType, decode_control, encode_control
from umbranet.wire.frames import encode_frame

__all__ = ["CircuitMoves", "DeferredOpen"]


@dataclass(frozen=True, slots=True)
class DeferredOpen:
    """What an in-session OPEN needs besides its early data, kept until the DIAL is built."""

    secret: ResumeSecret
    stream: int
    nonce: bytes
    port: int | None
    fields: dict[str, object]


class CircuitMoves:
    """The resume half of `Circuit` (state it shares is set by `Circuit.__init__`)."""

    # Slots, not an instance dict: a circuit holds more attributes than an instance dict can
    # share keys for (30), and then the interpreter specialises no method call on it; every
    # DATA frame makes several.
    __slots__ = ("_attempt", "_confirming", "_credit", "_detached", "_dialer", "_events",
                 "_expected_dialer", "_fin_queued", "_gen", "_host", "_inbound", "_limits",
                 "_opening", "_outbound", "_received", "_refused_bytes", "_resume", "_retained",
                 "_session", "_transmit", "_unread", "_window", "deferred", "epoch", "error",
                 "id", "in_session", "is_dialer", "local_fin", "owner", "peer", "peer_instance",
                 "port", "readable_bytes", "remote_fin", "resumes", "service", "state",
                 "unsent_bytes")  # fmt: skip

    id: int
    state: State
    peer: PeerIdentity | None
    peer_instance: str
    service: str
    is_dialer: bool
    epoch: int
    resumes: int
    local_fin: bool
    remote_fin: bool
    _fin_queued: bool
    _transmit: list[bytes]
    _events: deque[Event]
    _session: E2ESession | None
    _resume: ResumeSecret | None
    _retained: Retained
    _received: int
    _gen: int
    _attempt: tuple[Resume, ResumeOk | None, int] | None
    _detached: Detached | None
    _opening: tuple[Open, ResumeSecret] | None
    deferred: DeferredOpen | None
    _refused_bytes: tuple[bytes, bool] | None
    _window: ReceiveWindow
    _credit: SendCredit
    _outbound: deque[bytes]
    unsent_bytes: int
    _inbound: deque[bytes]
    _unread: bytes
    _limits: RekeyLimits | None

    def _move(self, target: State) -> None:
        raise NotImplementedError

    def _finish(self, closed: Closed) -> None:
        raise NotImplementedError

    def _pump(self) -> None:
        raise NotImplementedError

    def release_open(self) -> None:
        """(Dialer) Build the deferred DIAL now, the queued bytes (up to EARLY_DATA_MAX)
        sealed in its OPEN: they are stream offset 0 onwards and use no window."""
        deferred, self.deferred = self.deferred, None
        if deferred is None or self.state is not State.DIALING:
            return
        early = self._take_early()
        opening = Open.build(deferred.secret, deferred.stream, deferred.nonce, deferred.port, early)
        self._opening = (opening, deferred.secret)
        if early:
            self._retained.sent_frame(0, early)
        payload = encode_control(deferred.fields, opening.raw)
        self._transmit.append(encode_frame(FrameType.DIAL, self.id, payload))

    def unopened(self) -> tuple[bytes, bool]:
        """(Dialer) What the application wrote to an in-session circuit refused before it
        opened (early data and queued bytes) and whether it ended its direction: for a new
        dial to carry. Kept when the circuit closed, which drops its buffers."""
        return self._refused_bytes or (b"", False)

    def _keep_unopened(self) -> None:
        again = self._retained.rewind(0) or []
        data = b"".join([*again, *self._outbound])
        self._refused_bytes = data, self._fin_queued or self.local_fin

    def _take_early(self) -> bytes:
        budget = EARLY_DATA_MAX
        parts: list[bytes] = []
        while self._outbound and budget:
            head = self._outbound[0]
            if len(head) <= budget:
                parts.append(self._outbound.popleft())
            else:
                parts.append(head[:budget])
                self._outbound[0] = head[budget:]
            budget -= len(parts[-1])
        early = b"".join(parts)
        self.unsent_bytes -= len(early)
        return early

    def statistics(self) -> dict[str, int]:
        """Key updates so far (`rekeys_sent`, `rekeys_received`, on the current circuit),
        moves to another circuit, and the retransmit buffer's plaintext bytes."""
        session = self._session
        stats = {
            "rekeys_sent": 0 if session is None else session.rekeys_sent,
            "rekeys_received": 0 if session is None else session.rekeys_received,
            "resumes": self.resumes,
            "retained_bytes": self._retained.size,
        }
        return stats

    @property
    def resumable(self) -> bool:
        """The session can move to a new circuit if this one fails."""
        return self._resume is not None and (self.state is State.OPEN or self.state in MOVING)

    @property
    def resume_secret(self) -> ResumeSecret | None:
        """The session's secret (for streams opened inside it); never leaves the endpoint."""
        return self._resume

    @property
    def session_id(self) -> bytes | None:
        return None if self._resume is None else self._resume.sid

    @property
    def retained_bytes(self) -> int:
        """Sent plaintext kept for a resume (at most the peer's window)."""
        return self._retained.size

    def detach(self, code: ErrorCode, reason: str) -> None:
        """The circuit under the session is gone: keep the session and wait for a resume
        (a circuit that cannot move closes, unauthenticated, as a RESET would)."""
        if self.state is State.CLOSED:
            return
        if not self.resumable:
            self._finish(Closed(code, printable(reason), by_peer=True, authenticated=False))
            return
        self._transmit.clear()  # frames for the old circuit id: the retained bytes go again
        self._session = None
        self._attempt = None
        self.epoch += 1
        self.state = State.DETACHED
        detached = Detached(code, printable(reason))
        self._detached = detached
        self._events.append(detached)

    def give_up(self) -> None:
        """A detached session that will not move ends as its path failure said (a claim
        of the network: unauthenticated, as the RESET or lost link it came from)."""
        if self.state is State.DETACHED:
            cause = self._detached or Detached(ErrorCode.PEER_GONE, "path lost")
            self._finish(Closed(cause.code, cause.reason, by_peer=True, authenticated=False))

    def resume_dial(self, circuit_id: int, ticket: str, nonce: bytes) -> None:
        """(Dialer) Open circuit `circuit_id` for this session: DIAL carrying RESUME."""
        if self.state is not State.DETACHED or self._resume is None or not self.is_dialer:
            raise ConnectionError(f"cannot resume a circuit in state {self.state.value}")
        self._gen += 1
        resume = Resume.build(self._resume, self._gen, nonce, self._received, self.remote_fin)
        self.id = circuit_id
        self.epoch += 1
        self._attempt = (resume, None, 0)
        fields: dict[str, object] = {
            "ticket": ticket,
            "service": self.service,
            "window": self._window.window,
        }
        if self.peer_instance and self.peer is not None:
            # Only the host process holding the session can take the resume: name it, as
            # an in-session open does, so a router does not pick another one.
            fields["host"], fields["instance"] = self.peer.spiffe_id, self.peer_instance
        self._transmit.append(
            encode_frame(FrameType.DIAL, circuit_id, encode_control(fields, resume.raw))
        )
        self._move(State.RESUMING)

    def check_resume(self, resume: Resume) -> None:
        """(Host) Raise ResumeError unless `resume` is sealed by this session and newer
        than every generation seen (a router's replay)."""
        if self._resume is None or self.is_dialer or self.state is State.CLOSED:
            raise ResumeError(ErrorCode.RESUME_REFUSED, "no such session here")
        resume.verify(self._resume)
        if resume.gen <= self._gen:
            raise ResumeError(
                ErrorCode.REPLAYED, f"resume generation {resume.gen} seen before ({self._gen})"
            )

    def resume_accept(self, circuit_id: int, resume: Resume, window: int, nonce: bytes) -> None:
        """(Host) A checked RESUME arrived on circuit `circuit_id`: answer RESUME_OK there
        and stop sending on the old circuit; data flows after the dialer's CONFIRM."""
        self.check_resume(resume)
        assert self._resume is not None
        self._gen = resume.gen
        ok = ResumeOk.build(self._resume, resume, nonce, self._received, self.remote_fin)
        self._transmit.clear()
        self._session = None
        self.id = circuit_id
        self.epoch += 1
        self._attempt = (resume, ok, window)
        self._transmit.append(
            encode_frame(
                FrameType.ACCEPT,
                circuit_id,
                encode_control({"window": self._window.window}, ok.raw),
            )
        )
        self._move(State.REATTACHING)

    def _on_resume_ok(self, frame: Frame, now: datetime) -> None:
        assert self._attempt is not None and self._resume is not None
        resume = self._attempt[0]
        ctl = decode_control(frame.payload)
        peer_window = ctl.int_field("window", MIN_WINDOW, MAX_WINDOW)
        ok = ResumeOk.parse(ctl.blob, self._resume, resume)
        confirm = Confirm.build(self._resume, resume.raw, ok.raw)
        self._transmit.append(encode_frame(FrameType.HANDSHAKE, self.id, confirm))
        self._reattach(resume, ok, peer_window, now, ok.received, ok.fin)

    def _start_session(
        self, secret: ResumeSecret, transcript: bytes, peer_window: int, now: datetime
    ) -> None:
        """Keys of a circuit opened by an exchange under `secret` (resume or OPEN)."""
        d2h, h2d = secret.circuit_keys(transcript)
        send, receive = (d2h, h2d) if self.is_dialer else (h2d, d2h)
        session = E2ESession(
            CipherState(key=send),
            CipherState(key=receive),
            dialer=self.is_dialer,
            now=now,
            limits=self._limits,
        )
        session.resume = self._resume = secret
        self._session = session
        self._credit = SendCredit(peer_window)

    def _on_open_ok(self, frame: Frame, now: datetime) -> None:
        assert self._opening is not None and self.peer is not None
        opening, secret = self._opening
        ctl = decode_control(frame.payload)
        peer_window = ctl.int_field("window", MIN_WINDOW, MAX_WINDOW)
        ok = OpenOk.parse(ctl.blob, secret, opening)
        confirm = Confirm.build(secret, opening.header, ok.raw)
        self._transmit.append(encode_frame(FrameType.HANDSHAKE, self.id, confirm))
        self._start_session(
            opening.stream_secret(secret, ok.raw), opening.header + ok.raw, peer_window, now
        )
        self._opening = None
        self._move(State.OPEN)
        self._events.append(Opened(self.peer))
        self._pump()

    def _on_confirm(self, frame: Frame, now: datetime) -> None:
        assert self._attempt is not None and self._resume is not None
        resume, ok, peer_window = self._attempt
        assert ok is not None
        Confirm.verify(frame.payload, self._resume, resume.raw, ok.raw)
        self._reattach(resume, ok, peer_window, now, resume.received, resume.fin)

    def _reattach(  # noqa: PLR0917
        self,
        resume: Resume,
        ok: ResumeOk,
        peer_window: int,
        now: datetime,
        peer_received: int,
        peer_fin: bool,
    ) -> None:
        """Both ends proved the session: new keys, new windows, and send again from the
        peer's sealed offset (a FIN it did not get goes again too)."""
        assert self._resume is not None
        again = self._retained.rewind(peer_received)
        if again is None:
            raise ResumeError(
                ErrorCode.RESUME_GAP,
                f"peer holds {peer_received} bytes; this side keeps "
                f"{self._retained.base}..{self._retained.sent}",
            )
        if self._retained.fin and not peer_fin:
            self._retained.fin = False
            self.local_fin = False
            self._fin_queued = True
        if again:
            self._outbound.extendleft(reversed(again))
            self.unsent_bytes += sum(len(piece) for piece in again)
        if self._inbound:
            # Bytes that came over the old circuit owe the new one no credit.
            self._unread = b"".join([self._unread, *self._inbound])
            self._inbound.clear()
        self._window = ReceiveWindow(self._window.window)
        self._start_session(self._resume, resume.raw + ok.raw, peer_window, now)
        self._attempt = None
        self.resumes += 1
        self._move(State.OPEN)
        self._events.append(Resumed())
        self._pump()
