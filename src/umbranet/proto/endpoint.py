"""The endpoint's side of a link to a router, sans-IO: circuits, bindings, CONNECT, deadlines.

What an SDK `Context` does on one router link, without asyncio, so it runs the same over TLS,
in the simulated network, or on any other carrier:

- dials: `dial(...)` opens a circuit (odd ids, we open the link); its DIAL leaves at once
  (an in-session OPEN may wait for the stream's first write, to carry it: `flush`);
  `Dialed` or `DialFailed` follows, `DialFailed` with `dial_timeout` if nothing answered by
  the dial's deadline (the circuit is then reset, so a late ACCEPT finds nothing);
- bindings: `bind(...)` sends BIND; `Bound`, `BindFailed` (also `bind_timeout`) or later
  `BindingLost` (the router dropped it, e.g. access was revoked);
- incoming (`proto/endpoint_hosting.py`, with bindings): a router's CONNECT for one of our
  bindings becomes a host circuit, answered at once; `Incoming` follows when the dialer's
  handshake completes, `AcceptFailed` if it fails.
  At most `max_pending_accepts` handshakes may be in progress: a flood of dials that never
  finish their handshake cannot take the host's memory or its other dialers' turns.
- moves (`proto/resume.py`): a circuit whose path failed leaves as `SessionDetached` (the
  shell's `Sessions` keeps it); `resume(...)` puts a dialer's on a new circuit here, and
  any session that arrives here says `SessionResumed`. An entry whose circuit moved on
  (`epoch` changed) is stale: its frames are dropped and its old circuit id is reset.
- the cork: a dial that opened in this read holds its HANDSHAKE until the application's
  first write (one TLS record and one router read instead of two), or until a short
  deadline (`cork_delay`) for applications that wait for the server to speak first; an
  in-session OPEN waits the same way, to carry the first write as early data (0-RTT), and
  the host's ACCEPT of it waits for the host's first answer.

Rules of this file:
- Inputs: `handle_frames(frames, now)`, `handle_timeout(now)`, `dial`, `bind`, `unbind`,
  `cancel`, `flush(circuit)`, `close`. Outputs: `poll_transmit()`, `poll_event()`,
  `poll_timeout()`, `take_touched()` (circuits whose streams need waking);
  `flush_transmit(circuit)` is `flush` and `poll_transmit` in one call (a stream's
  every operation). `handle_frames` returns False after a read that only moved DATA or
  CREDIT of open circuits: the owner then only writes and wakes (the round trip's fast
  path: no event poll, no timer re-arm). `timeout_may_be_earlier` and
  `timeout_may_be_later` say when the owner's timer needs moving (a read that pushed a
  deadline earlier; a write that released the cork whose deadline the timer waits for).
- Circuit-level events (Opened/Closed) are consumed here and turned into the events above;
  a closed circuit is forgotten after its stream was told (`take_touched`).
- A misbehaving router raises nothing out of here: the link closes with the frame's error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from umbranet.clock import Deadline, Instant, deadline
from umbranet.proto.circuit import (
    PATH_FAILURES,
    Circuit,
    Closed,
    Detached,
    Opened,
    Readable,
    Resumed,
    State,
    Writable,
)
from umbranet.proto.circuit import Event as CircuitEvent
from umbranet.proto.endpoint_events import (
    AcceptFailed,
    BindFailed,
    BindingLost,
    Bound,
    Dialed,
    DialFailed,
    Event,
    Incoming,
    LinkDown,
    SessionDetached,
    SessionResumed,
)
from umbranet.proto.endpoint_hosting import Binding, CircuitEntry, EndpointHosting
from umbranet.proto.link import Closing, LinkSession, LinkTimers, PeerSilent, Role
from umbranet.wire import ErrorCode, Frame, FrameType, WireError
from umbranet.wire.control import encode_error

__all__ = [
    "AcceptFailed",
    "BindFailed",
    "Bound",
    "BindingLost",
    "DialFailed",
    "Dialed",
    "EndpointLink",
    "Event",
    "Incoming",
    "LinkDown",
    "SessionDetached",
    "SessionResumed",
]

# Frames for an open circuit. Only these go to a circuit by id: binding ids (BIND_OK,
# BIND_ERR) and new circuits (CONNECT) share the id field but not the number space.
_CIRCUIT_FRAMES = frozenset(
    {FrameType.ACCEPT, FrameType.HANDSHAKE, FrameType.DATA, FrameType.CREDIT, FrameType.RESET}
)
_LINK_FRAMES = frozenset({FrameType.HELLO, FrameType.PING, FrameType.PONG, FrameType.GOAWAY})
# Frames on a circuit we do not hold whose sender would otherwise wait for an answer.
_ANSWERED_WHEN_UNKNOWN = frozenset({int(FrameType.DATA), int(FrameType.HANDSHAKE)})
# What an open circuit's data moves: handled on the fast path of `handle_frames`.
_DATA_FRAMES = frozenset({int(FrameType.DATA), int(FrameType.CREDIT)})
# Circuit events that only say "look again": the touched set already wakes the stream.
_QUIET_EVENTS = (Readable, Writable)
# Enum members as module constants: the interpreter specialises a global lookup, not an
# attribute of a class (these are read for every frame).
_OPEN, _CLOSED = State.OPEN, State.CLOSED

DEFAULT_MAX_PENDING_ACCEPTS = 1024
DEFAULT_BIND_TIMEOUT = 10.0
DEFAULT_CORK_DELAY = 0.001


class EndpointLink(EndpointHosting):
    """An endpoint's link to one router. See the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        now: Instant,
        timers: LinkTimers | None = None,
        max_pending_accepts: int = DEFAULT_MAX_PENDING_ACCEPTS,
        bind_timeout: float = DEFAULT_BIND_TIMEOUT,
        cork_delay: float = DEFAULT_CORK_DELAY,
    ) -> None:
        self.session = LinkSession(
            Role.ENDPOINT, opener=True, name=name, peer_kind="router", now=now, timers=timers
        )
        self.max_pending_accepts = max_pending_accepts
        self.bind_timeout = bind_timeout
        self.cork_delay = cork_delay
        self.counters: dict[str, int] = {}
        # The link's send queue (the session's own list): an owner tests it before polling.
        self.outbox = self.session.outbox
        self._circuits: dict[int, CircuitEntry] = {}
        self._bindings: dict[int, Binding] = {}
        self._pending_accepts = 0
        self._touched: dict[int, Circuit] = {}
        self._corked: dict[int, tuple[list[bytes], float]] = {}
        self._dialing: dict[int, float] = {}  # circuit id -> when to give up
        # The earliest deadline set since the last `handle_timeout` (which recomputes it):
        # `poll_timeout` runs after every read and must not scan every circuit.
        self._due: float | None = None
        # Whether `poll_timeout` may now be earlier than when the owner last asked: a read
        # only pushes the keepalive later, so the owner re-arms after one only if it is.
        self._rearm = True
        # Whether the deadline `poll_timeout` last gave went away before it was due (a cork
        # released by the application's write): `_due` is recomputed at the next
        # `poll_timeout`, and an owner that moves its timer there saves a wake-up that would
        # find nothing to do (one per in-session dial on each side). An attribute, not a
        # property: the owner tests it after every write.
        self.timeout_may_be_later = False
        self._events: deque[Event] = deque()
        self._down = False
        # A GOAWAY's code: streams move on only when the path failed (carrier lost or silent,
        # router stopping or shedding), not when we closed or were closed for our credentials.
        self._goaway: ErrorCode | None = None

    # -- inputs: the application --------------------------------------------------------

    def dial(self, make: Callable[[int], Circuit], now: Instant, timeout: float) -> Circuit:
        """Open a circuit built by `make(circuit_id)` (`Circuit.dial`); its DIAL is queued,
        unless the circuit defers its OPEN to the application's first write (the shell's
        next `flush` of it sends it)."""
        circuit_id = self.session.next_id(self._circuits)
        circuit = make(circuit_id)
        self._circuits[circuit_id] = CircuitEntry(circuit, None)
        self._dialing[circuit_id] = self._due_at(now.later(timeout))
        if circuit.deferred is not None:
            self._corked[circuit_id] = ([], self._due_at(now.later(self.cork_delay)))
        else:
            self.flush(circuit)
        return circuit

    def resume(
        self, circuit: Circuit, ticket: str, nonce: bytes, now: Instant, timeout: float
    ) -> None:
        """Move a detached dialer session onto a new circuit of this link (RESUME)."""
        circuit_id = self.session.next_id(self._circuits)
        circuit.resume_dial(circuit_id, ticket, nonce)
        self._circuits[circuit_id] = CircuitEntry(circuit, None)
        self._dialing[circuit_id] = self._due_at(now.later(timeout))
        self._count("resume_dials")
        self.flush(circuit)

    def cancel(self, circuit_id: int, reason: str = "dial abandoned") -> None:
        """Give up a dial (or any circuit): reset it and forget it. A resume that did not
        answer only detaches again: its session may still find another path."""
        entry = self._circuits.pop(circuit_id, None)
        self._dialing.pop(circuit_id, None)
        if entry is not None and entry.circuit.state is State.RESUMING:
            circuit = entry.circuit
            self._corked.pop(circuit_id, None)
            self.session.send(
                FrameType.RESET, circuit_id, encode_error(ErrorCode.CANCELLED, reason)
            )
            circuit.detach(ErrorCode.HANDSHAKE_TIMEOUT, reason)
            while circuit.poll_event() is not None:
                pass  # the Detached just made: reported here, not by a later dispatch
            self._events.append(SessionDetached(circuit, "handshake_timeout", reason))
            return
        if entry is not None and entry.circuit.state is not _CLOSED:
            entry.circuit.reset(ErrorCode.CANCELLED, reason)
            self._corked.pop(circuit_id, None)
            self.session.outbox.extend(entry.circuit.poll_transmit())

    def flush(self, circuit: Circuit) -> None:
        """Queue what `circuit` produced (a write, a read's credit, a close); what the cork
        holds for it leaves with it (a read that produced nothing releases nothing)."""
        out = circuit.poll_transmit()
        if out:
            held = self._corked.pop(circuit.id, None) if self._corked else None
            if held is not None:
                self._released(held[1])
                self.outbox.extend(held[0])
            self.outbox.extend(out)
        if circuit.state is _CLOSED and circuit.id in self._circuits:
            self._dispatch(circuit)

    def flush_transmit(self, circuit: Circuit) -> list[bytes]:
        """`flush(circuit)` and then `poll_transmit()`, in one call: what a stream's every
        write and read costs the link."""
        out = circuit.poll_transmit()
        held = self._corked.pop(circuit.id, None) if out and self._corked else None
        outbox = self.outbox
        if held is not None or outbox:
            if held is not None:
                self._released(held[1])
                outbox.extend(held[0])
            outbox.extend(out)
            out = outbox[:]
            del outbox[:]
        if circuit.state is _CLOSED and circuit.id in self._circuits:
            self._dispatch(circuit)
        return out

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "endpoint closing") -> None:
        self._rearm = True
        self.session.close(code, reason)
        self._drain_session()

    # -- inputs: the carrier ------------------------------------------------------------

    def handle_frames(self, frames: list[Frame], now: Instant) -> bool:
        """One read's frames. A frame the router should never send closes the link.

        Returns whether the read made news beyond data: False when it only moved DATA and
        CREDIT of open circuits, so no event is queued and no deadline moved earlier (the
        owner then writes `poll_transmit()` and wakes `take_touched()`, nothing else)."""
        session = self.session
        session_state = session.state
        session.last_heard = now.mono  # `heard(now)`, inline: once per read
        circuits = self._circuits
        wall = now.wall
        news = self._events or self._rearm
        # The usual read on an open stream is one frame (tested without a len() call):
        # no dict to build, and nothing but that circuit to look at.
        if frames and frames[0] is frames[-1]:
            frame = frames[0]
            entry = circuits.get(frame.circuit)
            if (
                entry is not None
                and entry.opened
                and frame.type in _DATA_FRAMES
                and entry.epoch == entry.circuit.epoch
            ):
                circuit = entry.circuit
                circuit.handle_frame(frame, wall)
                out = circuit.poll_transmit()
                if out:
                    self.outbox.extend(out)
                if circuit.state is _OPEN:
                    # DATA or CREDIT on an open circuit queues one "look again" event: no
                    # second poll, no dispatch (anything else goes the whole way).
                    event = circuit.poll_event()
                    if type(event) in _QUIET_EVENTS:
                        self._touched[frame.circuit] = circuit
                        return bool(news or self._events or self._rearm)
                    self._dispatch(circuit, entry, event)
                else:
                    self._dispatch(circuit, entry)
                return bool(news or self._events or self._rearm)
        touched: dict[int, Circuit] = {}
        for frame in frames:
            entry = circuits.get(frame.circuit)
            if entry is not None and frame.type in _CIRCUIT_FRAMES:
                if entry.epoch != entry.circuit.epoch:
                    self._stale(frame.circuit, frame.type)
                    continue
                entry.circuit.handle_frame(frame, now.wall)
                touched[frame.circuit] = entry.circuit
                continue
            try:
                self._control_frame(frame, now, touched)
            except WireError as exc:
                self._count(exc.code.code)
                self.session.close(exc.code, exc.reason)
                break
        for circuit_id, circuit in touched.items():
            if self._just_dialed(circuit_id, circuit) or self._just_accepted(circuit_id, circuit):
                at = self._due_at(now.later(self.cork_delay))
                self._corked[circuit_id] = (circuit.poll_transmit(), at)
            else:
                self.session.outbox.extend(circuit.poll_transmit())
        for circuit_id, circuit in touched.items():
            # Under the id it was touched by: a session whose old path failed and whose
            # RESUME came in the same read is touched under both ids, and the old id's
            # Detached must free the old entry, not the one the resume just made.
            entry = circuits.get(circuit_id)
            self._dispatch(
                circuit, entry if entry is not None and entry.circuit is circuit else None
            )
        self._drain_session()
        if self.session.state is not session_state:  # HELLO done or closed: new deadlines
            self._rearm = True
        return True

    def handle_timeout(self, now: Instant) -> None:
        """Release held handshakes, time out dials and binds, keep the link alive, and let
        every circuit rekey by age. The keepalive deadline makes this run at least every
        `ping_interval`, which bounds how late an age-based rekey can be."""
        self.session.handle_timeout(now)
        mono = now.mono
        for circuit_id, entry in list(self._circuits.items()):
            circuit = entry.circuit
            if entry.epoch != circuit.epoch:
                self._stale(circuit_id, FrameType.DATA)
                continue
            due = circuit.poll_timeout()
            if due is not None and due[0] <= now.wall:
                circuit.handle_timer(now.wall)
                self.session.outbox.extend(circuit.poll_transmit())
                self._dispatch(circuit)
        for circuit_id, (held, at) in list(self._corked.items()):
            if at <= mono:
                del self._corked[circuit_id]
                self.session.outbox.extend(held)
                corked = self._circuits.get(circuit_id)
                if corked is not None:  # and what it queued since (a deferred OPEN builds now)
                    self.session.outbox.extend(corked.circuit.poll_transmit())
        for circuit_id, at in list(self._dialing.items()):
            if at <= mono:
                self.cancel(circuit_id, "dial timed out")
                self._count("dial_timeout")
                self._events.append(
                    DialFailed(circuit_id, "dial_timeout", "no answer from the service in time")
                )
        for binding_id, binding in self._bindings.items():
            if binding.deadline is not None and binding.deadline <= mono:
                binding.deadline = None
                self._count("bind_timeout")
                self._events.append(
                    BindFailed(binding_id, "router_timeout", "the router did not answer BIND")
                )
        self._due = self._next_due()
        self._rearm = True
        self._drain_session()

    def link_lost(self) -> None:
        """The carrier is gone: every circuit ends with `peer_gone`, every wait fails."""
        self._corked.clear()
        self._rearm = True
        movable = self._goaway is None or self._goaway in PATH_FAILURES
        for entry in list(self._circuits.values()):
            circuit = entry.circuit
            if entry.epoch != circuit.epoch:
                continue  # moved on to another link
            if circuit.resumable and movable:
                circuit.detach(ErrorCode.PEER_GONE, "link to the router dropped")
            elif circuit.state is not _CLOSED:
                circuit.reset(ErrorCode.PEER_GONE, "link to the router dropped")
                circuit.poll_transmit()
            self._dispatch(circuit)
        self._circuits.clear()
        for binding_id, binding in self._bindings.items():
            if binding.deadline is not None:
                self._events.append(BindFailed(binding_id, "router_unreachable", "link lost"))
        self._bindings.clear()
        if not self._down:
            self._down = True
            self._events.append(LinkDown("router_unreachable", "link lost"))

    # -- outputs ------------------------------------------------------------------------

    def poll_transmit(self) -> list[bytes]:
        # The session's queue, taken here: one call per write instead of two.
        outbox = self.outbox
        if not outbox:
            return []
        out = outbox[:]
        del outbox[:]
        return out

    def poll_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def has_news(self) -> bool:
        """Whether `poll_event` or `take_touched` has anything (a stream's own flush
        rarely makes news: only a close does, so its owner can skip the polls)."""
        return bool(self._events or self._touched)

    def take_touched(self) -> list[Circuit]:
        """Circuits that changed since the last call (their streams need waking)."""
        touched = self._touched
        if not touched:
            return []
        self._touched = {}
        return list(touched.values())

    @property
    def timeout_may_be_earlier(self) -> bool:
        """Whether `poll_timeout` may answer earlier than it did last time it was asked."""
        return self._rearm

    def poll_timeout(self) -> Deadline | None:
        """The link's next deadline, or an earlier cork, dial or bind deadline (which may
        have passed already without work: `handle_timeout` then only recomputes)."""
        self._rearm = False
        if self.timeout_may_be_later:
            self.timeout_may_be_later = False
            self._due = self._next_due()
        due = self._due
        link = self.session.poll_timeout()
        if due is None or (link is not None and link.at <= due):
            return link
        return deadline((due, "circuits"))

    @property
    def ready(self) -> bool:
        return self.session.ready

    @property
    def circuits(self) -> int:
        return len(self._circuits)

    # -- internals ----------------------------------------------------------------------

    def _control_frame(self, frame: Frame, now: Instant, touched: dict[int, Circuit]) -> None:
        ftype = frame.type
        if ftype in _LINK_FRAMES and frame.circuit == 0:
            self.session.handle_link_frame(frame, now)
        elif not self.session.ready:
            raise WireError(ErrorCode.PROTOCOL_ERROR, "frame before HELLO")
        elif ftype == FrameType.CONNECT:
            self._connect(frame, touched)
        elif ftype in (FrameType.BIND_OK, FrameType.BIND_ERR):
            self._bind_answer(frame)
        elif ftype in _CIRCUIT_FRAMES:
            # A circuit we already ended (reset, cancelled dial) races with its last frames.
            self._count("frames_unknown_circuit")
            if ftype in _ANSWERED_WHEN_UNKNOWN:
                # Data or a handshake for a circuit we do not hold: its sender must not
                # wait for us forever (a RESET goes back; routers drop it if they already
                # forgot the circuit, and a RESET is never answered).
                reason = "no such circuit at this endpoint"
                self.session.send(
                    FrameType.RESET, frame.circuit, encode_error(ErrorCode.PEER_GONE, reason)
                )
        else:
            raise WireError(ErrorCode.PROTOCOL_ERROR, f"unexpected {FrameType(ftype).name}")

    def _dispatch(
        self, circuit: Circuit, entry: CircuitEntry | None = None, event: CircuitEvent | None = None
    ) -> None:
        """Turn the circuit's Opened/Closed into link events; forget it once closed.
        `entry`: the circuit's, when the caller has just looked it up; `event`: one the
        caller already took from the circuit."""
        if entry is None:
            entry = self._circuits.get(circuit.id)
        if entry is None or entry.circuit is not circuit:
            return
        if event is None:
            event = circuit.poll_event()
        while event is not None:
            if type(event) in _QUIET_EVENTS:
                event = circuit.poll_event()
                continue
            if isinstance(event, Detached):
                self._detached(entry, event)
                return
            if isinstance(event, Resumed):
                self._dialing.pop(circuit.id, None)
                if not entry.opened and entry.binding_id is not None:
                    self._pending_accepts -= 1
                entry.opened = True
                entry.epoch = circuit.epoch
                self._events.append(SessionResumed(circuit))
            elif isinstance(event, Opened):
                entry.opened = True
                self._dialing.pop(circuit.id, None)
                if entry.binding_id is None:
                    self._events.append(Dialed(circuit))
                else:
                    self._pending_accepts -= 1
                    self._events.append(Incoming(entry.binding_id, circuit))
            elif isinstance(event, Closed):
                if not entry.opened:
                    self._not_opened(entry, event)
                elif not event.clean:
                    self._ended(event)
            event = circuit.poll_event()
        if circuit.state is _CLOSED:
            del self._circuits[circuit.id]
            self._corked.pop(circuit.id, None)
            self._dialing.pop(circuit.id, None)
        self._touched[circuit.id] = circuit

    def _detached(self, entry: CircuitEntry, event: Detached) -> None:
        """The circuit's path failed and its session left: forget the entry, tell the shell."""
        circuit = entry.circuit
        for circuit_id, held in list(self._circuits.items()):
            if held is entry:
                del self._circuits[circuit_id]
                self._corked.pop(circuit_id, None)
                self._dialing.pop(circuit_id, None)
        if not entry.opened and entry.binding_id is not None:
            self._pending_accepts -= 1
        self._count("sessions_detached")
        self._events.append(SessionDetached(circuit, event.code.code, event.reason))

    def _stale(self, circuit_id: int, ftype: int) -> None:
        """Frames for a circuit whose session moved to another one: free the old circuit."""
        del self._circuits[circuit_id]
        self._corked.pop(circuit_id, None)
        self._dialing.pop(circuit_id, None)
        self._count("frames_moved_circuit")
        if ftype != FrameType.RESET:
            reason = "the session moved to another circuit"
            self.session.send(
                FrameType.RESET, circuit_id, encode_error(ErrorCode.PEER_GONE, reason)
            )

    def _ended(self, event: Closed) -> None:
        """An open circuit ended other than by both sealed FINs: count why, and count apart
        the ends nobody authenticated (a RESET any router could have forged)."""
        if not event.by_peer:
            self._count(event.code.code)
        if not event.authenticated:
            self._count("reset_unauthenticated")

    def _not_opened(self, entry: CircuitEntry, event: Closed) -> None:
        """A circuit closed before it opened: a refused dial or a failed accept (our own
        aborts, e.g. a dialer refusing a host's stale bind ticket, are counted apart)."""
        self._count(event.code.code if event.by_peer else f"aborted_{event.code.code}")
        if entry.binding_id is None:
            self._events.append(DialFailed(entry.circuit.id, event.code.code, event.reason))
        else:
            self._pending_accepts -= 1
            self._events.append(AcceptFailed(entry.binding_id, event.code.code, event.reason))
        entry.opened = True  # reported once

    def _just_dialed(self, circuit_id: int, circuit: Circuit) -> bool:
        """Our dial opened in this read and its stream has not written yet."""
        entry = self._circuits.get(circuit_id)
        return (
            entry is not None
            and entry.binding_id is None
            and not entry.opened
            and circuit.state is _OPEN
            and circuit_id not in self._corked
        )

    def _next_due(self) -> float | None:
        pending = [at for _, at in self._corked.values()]
        pending += self._dialing.values()
        pending += [b.deadline for b in self._bindings.values() if b.deadline is not None]
        return min(pending, default=None)

    def _released(self, at: float) -> None:
        """A cork due `at` was released early: if it set `_due`, the deadline moves later."""
        if at == self._due:
            self.timeout_may_be_later = True

    def _due_at(self, at: float) -> float:
        if self._due is None or at < self._due:
            self._due = at
            self._rearm = True
        return at

    def _refuse(self, circuit_id: int, counter: str, code: ErrorCode, reason: str) -> None:
        self._count(counter)
        self.session.send(FrameType.RESET, circuit_id, encode_error(code, reason))

    def _drain_session(self) -> None:
        while (event := self.session.poll_event()) is not None:
            if isinstance(event, Closing) and not self._down:
                self._goaway = event.code if event.by_peer else ErrorCode.CANCELLED
                self._down = True
                self._events.append(LinkDown(event.code.code, event.reason))
            elif isinstance(event, PeerSilent) and not self._down:
                self._down = True
                self._count("peer_silent")
                self._events.append(
                    LinkDown("peer_silent", f"router silent for {event.silent_for:.1f}s")
                )

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1
