"""RouterConnection: the asyncio shell around one endpoint link (`proto.endpoint.EndpointLink`).

One TLS handshake per router, not per stream (a handshake costs ~1 ms of CPU): dials and
bindings share the link, each circuit with its own flow control. The shell checks that the
server is a router of our network (SPIFFE ID kind `router`), then drives the machine: frames
in, events out (futures resolved, streams woken), writes out, one timer armed. Keepalive,
dial and bind deadlines and the handshake cork are the machine's; the shell only keeps
the asyncio objects (futures, streams, listeners) keyed by the machine's ids. A stream whose
path fails leaves its connection for the context's `SessionMover` (`sdk/moves.py`) and comes
back on whichever connection its session resumes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from umbranet.aio.driver import MachineTimer
from umbranet.aio.link import Link, open_router_link
from umbranet.aio.tls import peer_svid
from umbranet.clock import Clock
from umbranet.pki import IdentityFile, PkiError
from umbranet.proto.circuit import Circuit, State
from umbranet.proto.endpoint import (
    AcceptFailed,
    BindFailed,
    BindingLost,
    Bound,
    Dialed,
    DialFailed,
    EndpointLink,
    Incoming,
    LinkDown,
    SessionDetached,
    SessionResumed,
)
from umbranet.proto.flow import DEFAULT_WINDOW
from umbranet.proto.link import LinkTimers
from umbranet.proto.text import printable
from umbranet.sdk.errors import BindError, DialError
from umbranet.sdk.stream import Stream
from umbranet.wire import ErrorCode, Frame

if TYPE_CHECKING:
    from umbranet.sdk.listener import Listener
    from umbranet.sdk.moves import SessionMover

log = logging.getLogger("umbranet.sdk")
# An enum member as a module constant: the interpreter specialises a global lookup, not
# an attribute of a class (read after every stream operation).
_CLOSED = State.CLOSED


class RouterConnection:
    """The link to one router and every circuit and binding on it."""

    def __init__(
        self,
        identity: IdentityFile,
        address: str,
        clock: Clock,
        on_lost: Callable[[RouterConnection], None] | None = None,
        timers: LinkTimers | None = None,
        *,
        mover: SessionMover | None = None,
        mark: int | None = None,
    ) -> None:
        self.identity = identity
        self.mark = mark  # firewall mark on the link's packets (`aio/marked.py`)
        self._mover = mover
        self.address = address
        self.name = address
        self._clock = clock
        self._on_lost = on_lost
        self._timers = timers
        self._link: Link | None = None
        self._machine: EndpointLink | None = None
        self._timer: MachineTimer | None = None
        self._hello: asyncio.Future[None] | None = None
        self._dials: dict[int, tuple[asyncio.Future[Stream], str]] = {}
        # In-session dials whose stream the application already has (0-RTT): who to tell
        # when the open is refused.
        self._unconfirmed: dict[int, Callable[[Stream, DialError], None]] = {}
        self._streams: dict[int, Stream] = {}
        self._bind_waiters: dict[int, asyncio.Future[int]] = {}
        self._listeners: dict[int, Listener] = {}
        self.closed = False

    # -- lifecycle ----------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        """Open TLS to the router, verify it is a router, exchange HELLO."""
        self._hello = asyncio.get_running_loop().create_future()
        try:
            await open_router_link(
                self, self.address, self.identity, self._hello, timeout, mark=self.mark
            )
        except (OSError, TimeoutError) as exc:
            self.close()
            raise DialError("router_unreachable", f"router {self.address}: {exc!r}") from exc

    def close(self) -> None:
        if self._machine is not None and self._link is not None and not self._link.closed:
            self._machine.close()
            self._transmit()
            self._link.close_transport()
        elif self._link is not None:
            self._link.abort()
        if self._timer is not None:
            self._timer.cancel()
        self.closed = True

    def link_blocked(self) -> asyncio.Future[None] | None:
        """What to wait for while the link's writes are paused; None when it accepts writes."""
        return self._link.write_blocked() if self._link is not None else None

    @property
    def live(self) -> bool:
        return not self.closed and self._link is not None and not self._link.closed

    @property
    def idle(self) -> bool:
        """Nothing uses the link: no stream, no dial in progress, no binding."""
        return not (self._streams or self._dials or self._listeners or self._bind_waiters)

    def release(self) -> None:
        """Close an idle link on purpose: not a loss (no `on_lost` call)."""
        self._on_lost = None
        self.close()

    def open_services(self) -> set[str]:
        """Services this link carries open streams of (ours as dialer or host)."""
        return {stream.service for stream in self._streams.values()}

    @property
    def counters(self) -> dict[str, int]:
        return self._machine.counters if self._machine is not None else {}

    def statistics(self) -> dict[str, object]:
        machine = self._machine
        link = self._link
        return {
            "router": self.name,
            "live": self.live,
            "circuits": machine.circuits if machine is not None else 0,
            "link": machine.session.statistics() if machine is not None else {},
            "bytes_in": link.bytes_in if link is not None else 0,
            "bytes_out": link.bytes_out if link is not None else 0,
            "counters": dict(self.counters),
        }

    # -- circuits -----------------------------------------------------------------------

    def open_circuit(
        self, service: str, make: Callable[[int], Circuit], timeout: float = 10.0
    ) -> tuple[int, asyncio.Future[Stream]]:
        """Start a dial: `make(circuit_id)` builds the circuit; the future yields the stream
        (or DialError, `dial_timeout` when nothing answered within `timeout`)."""
        machine = self._require_machine()
        waiter: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()
        circuit = machine.dial(make, self._clock.now(), timeout)
        self._dials[circuit.id] = (waiter, service)
        self._step()
        return circuit.id, waiter

    def open_stream(
        self,
        service: str,
        make: Callable[[int], Circuit],
        timeout: float,
        refused: Callable[[Stream, DialError], None],
    ) -> Stream:
        """Start an in-session dial whose circuit defers its OPEN (`Circuit.open_in_session`)
        and return its stream at once: the first write rides with the OPEN, which leaves
        with it, with the stream's first wait, or after the machine's cork delay. A refusal
        goes to `refused` (the stream's bytes are all still unsent, so it can dial again)."""
        machine = self._require_machine()
        circuit = machine.dial(make, self._clock.now(), timeout)
        stream = Stream(self, circuit, service)
        circuit.owner = stream
        self._streams[circuit.id] = stream
        self._unconfirmed[circuit.id] = refused
        self._step()  # arms the cork and dial deadlines
        return stream

    def adopt(self, stream: Stream, circuit: Circuit) -> None:
        """`stream` carries on over `circuit` of this link (its open was refused and a new
        dial took its place)."""
        circuit.owner = stream
        self._streams[circuit.id] = stream

    def resume_circuit(self, circuit: Circuit, ticket: str, nonce: bytes, timeout: float) -> None:
        """Put a paused stream's session on a new circuit of this link (RESUME)."""
        machine = self._require_machine()
        machine.resume(circuit, ticket, nonce, self._clock.now(), timeout)
        stream = circuit.owner
        if isinstance(stream, Stream):
            stream.moved_to(self)
            self._streams[circuit.id] = stream
        self._step()

    def cancel_circuit(self, circuit_id: int) -> None:
        self._dials.pop(circuit_id, None)
        if self._machine is not None:
            self._machine.cancel(circuit_id)
            self._step()

    def flush(self, circuit: Circuit) -> None:
        """Send what the circuit queued (called by streams after every operation)."""
        machine, link = self._machine, self._link
        if machine is None or link is None:
            return
        # Writes, reads and closes never move a deadline earlier: no timer to re-arm. The
        # stream that flushed wakes itself; only a close makes news for others.
        out = machine.flush_transmit(circuit)
        if out:
            link.write_many(out)
            # This write released a cork (a deferred OPEN, a held ACCEPT or HANDSHAKE):
            # its deadline is gone, so the timer need not wake for it.
            if machine.timeout_may_be_later and self._timer is not None:
                self._timer.move(machine.poll_timeout())
        if circuit.state is _CLOSED and machine.has_news:
            self._deliver()

    # -- bindings -----------------------------------------------------------------------

    async def bind(self, listener: Listener, binding_id: int, ticket: str) -> int:
        """Ask the router to route dials for the listener's service here; returns expiry."""
        machine = self._require_machine()
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._bind_waiters[binding_id] = waiter
        self._listeners[binding_id] = listener

        mover = self._mover

        def accept(circuit_id: int, connect: Frame) -> Circuit:
            if mover is not None:
                return mover.accept(circuit_id, connect, listener.handshake(), DEFAULT_WINDOW)
            return Circuit.accept(circuit_id, connect, listener.handshake())

        machine.bind(
            binding_id,
            listener.service,
            ticket,
            accept,
            self._clock.now(),
            weight=listener.weight,
            precedence=listener.precedence,
            instance=mover.sessions.instance if mover is not None else "",
        )
        self._step()
        try:
            return await waiter
        finally:
            self._bind_waiters.pop(binding_id, None)

    def unbind(self, binding_id: int) -> None:
        if self._listeners.pop(binding_id, None) is not None and self._machine is not None:
            self._machine.unbind(binding_id)
            self._step()

    # -- LinkOwner ----------------------------------------------------------------------

    def link_made(self, link: Link) -> None:
        assert link.transport is not None
        now = self._clock.now()
        try:
            peer = peer_svid(link.transport, self.identity.bundle, now.wall)
        except PkiError as exc:
            link.abort()
            self._fail_hello(DialError(exc.code, f"router certificate: {exc.reason}"))
            return
        if peer.spiffe_id.kind != "router":
            link.abort()
            self._fail_hello(DialError("not_a_router", f"{peer.spiffe_id} is not a router"))
            return
        link.peer_id = str(peer.spiffe_id)
        self.name = peer.spiffe_id.name or self.address
        self._link = link
        # Every drain asks: straight to the link's method, one Python frame less per drain.
        self.link_blocked = link.write_blocked  # type: ignore[method-assign]
        self._machine = EndpointLink(name=self.identity.name, now=now, timers=self._timers)
        self._timer = MachineTimer(self._clock, self._on_timer)
        self._step()

    def frames_received(self, link: Link, frames: list[Frame]) -> None:
        machine = self._machine
        if machine is None:
            return
        if machine.handle_frames(frames, self._clock.now()):
            self._step()
            return
        # Only data moved on open circuits: write what it made, wake the streams.
        if machine.outbox:
            link.write_many(machine.poll_transmit())
        streams = self._streams
        for circuit in machine.take_touched():
            stream = streams.get(circuit.id)
            if stream is not None:
                stream.notify()

    def link_lost(self, link: Link, error: BaseException | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._fail_hello(DialError("router_unreachable", f"link to {self.address} lost"))
        if self._machine is not None:
            self._machine.link_lost()
            self._deliver()
        for waiter in self._bind_waiters.values():
            if not waiter.done():
                waiter.set_exception(BindError("router_unreachable", "link lost"))
        for listener in list(self._listeners.values()):
            listener.connection_lost(self)
        self._listeners.clear()
        if self._on_lost is not None:
            self._on_lost(self)

    # -- the driver ---------------------------------------------------------------------

    def _on_timer(self) -> None:
        if self._machine is not None and not self.closed:
            self._machine.handle_timeout(self._clock.now())
            self._step()

    def _step(self) -> None:
        """After any input: write, deliver events, wake streams, re-arm the timer (only if
        a deadline may have moved earlier: after most reads none did)."""
        self._transmit()
        self._deliver()
        machine, timer = self._machine, self._timer
        if timer is None or machine is None or self.closed:
            return
        if machine.timeout_may_be_earlier:
            timer.arm(machine.poll_timeout())

    def _transmit(self) -> None:
        machine, link = self._machine, self._link
        if machine is not None and link is not None:
            out = machine.poll_transmit()
            if out:
                link.write_many(out)

    def _deliver(self) -> None:
        machine = self._machine
        if machine is None:
            return
        hello = self._hello
        if hello is not None and not hello.done() and machine.ready:
            hello.set_result(None)
        while (event := machine.poll_event()) is not None:
            if isinstance(event, Dialed):
                self._dialed(event.circuit)
            elif isinstance(event, Incoming):
                self._incoming(event.binding_id, event.circuit)
            elif isinstance(event, DialFailed) and event.circuit_id in self._unconfirmed:
                refused = self._unconfirmed.pop(event.circuit_id)
                stream = self._streams.get(event.circuit_id)
                if stream is not None:
                    refused(stream, DialError(event.code, printable(event.reason)))
            elif isinstance(event, DialFailed):
                dial = self._dials.pop(event.circuit_id, None)
                if dial is not None and not dial[0].done():
                    dial[0].set_exception(DialError(event.code, printable(event.reason)))
            elif isinstance(event, AcceptFailed):
                listener = self._listeners.get(event.binding_id)
                if listener is not None:
                    listener.refused(event.code, event.reason)
            elif isinstance(event, Bound | BindFailed):
                self._bind_answered(event)
            elif isinstance(event, BindingLost):
                self._binding_lost(event)
            elif isinstance(event, LinkDown):
                self._link_down(event)
            elif isinstance(event, SessionDetached):
                self._session_detached(event.circuit)
            elif isinstance(event, SessionResumed):
                self._session_resumed(event.circuit)
        for circuit in machine.take_touched():
            if circuit.state is _CLOSED:
                stream = self._streams.pop(circuit.id, None)
                # A closed circuit never moves, so nothing finds its stream through it any
                # more: cut the stream <-> circuit cycle and let the session table go of
                # it, so both are freed by reference count now (as a cycle held by the
                # table they outlived two collections and piled up for a full one).
                if stream is not None and circuit.owner is stream:
                    circuit.owner = None
                if self._mover is not None:
                    self._mover.sessions.closed(circuit)
            else:
                stream = self._streams.get(circuit.id)
            if stream is not None:
                stream.notify()

    def _dialed(self, circuit: Circuit) -> None:
        if self._unconfirmed.pop(circuit.id, None) is not None:
            if self._mover is not None:
                self._mover.opened(circuit)
            return
        waiter, service = self._dials.pop(circuit.id, (None, ""))
        if waiter is None or waiter.done():
            circuit.reset(ErrorCode.CANCELLED, "dial abandoned")
            self.flush(circuit)
            return
        stream = Stream(self, circuit, service)
        circuit.owner = stream
        self._streams[circuit.id] = stream
        if self._mover is not None:
            self._mover.opened(circuit)
        waiter.set_result(stream)

    def _incoming(self, binding_id: int, circuit: Circuit) -> None:
        listener = self._listeners.get(binding_id)
        if listener is None:
            circuit.reset(ErrorCode.REFUSED, "no longer hosting this service")
            self.flush(circuit)
            return
        stream = listener.new_stream(self, circuit)
        circuit.owner = stream
        self._streams[circuit.id] = stream
        if self._mover is not None:
            self._mover.opened(circuit)
        listener.deliver(stream)

    def _session_detached(self, circuit: Circuit) -> None:
        """A stream's path failed: it pauses while the mover looks for another path (without
        a mover it ends as the failure said)."""
        if self._streams.get(circuit.id) is circuit.owner:
            del self._streams[circuit.id]
        if self._mover is not None:
            self._mover.detached(circuit)
            return
        circuit.give_up()
        if isinstance(circuit.owner, Stream):
            circuit.owner.notify()

    def _session_resumed(self, circuit: Circuit) -> None:
        stream = circuit.owner
        if isinstance(stream, Stream):
            stream.moved_to(self)
            self._streams[circuit.id] = stream
            stream.notify()
        if self._mover is not None:
            self._mover.resumed(circuit)

    def _bind_answered(self, event: Bound | BindFailed) -> None:
        waiter = self._bind_waiters.get(event.binding_id)
        if waiter is None or waiter.done():
            return
        if isinstance(event, Bound):
            waiter.set_result(event.expires_at)
        else:
            waiter.set_exception(BindError(event.code, printable(event.reason)))

    def _binding_lost(self, event: BindingLost) -> None:
        """The router dropped a live binding (e.g. access was revoked): tell its listener."""
        listener = self._listeners.pop(event.binding_id, None)
        if listener is not None:
            log.warning(
                "binding dropped by the router service=%s code=%s reason=%s",
                printable(listener.service),
                event.code,
                printable(event.reason),
            )
            listener.binding_lost(self, event.code, event.reason)

    def _link_down(self, event: LinkDown) -> None:
        if self._hello is not None and not self._hello.done() and event.code != "no_error":
            self._fail_hello(DialError(event.code, event.reason))
        log.info(
            "link down router=%s code=%s reason=%s",
            printable(self.name),
            event.code,
            printable(event.reason),
        )
        if self._link is None:
            return
        if event.code == "peer_silent":
            self._link.abort()  # a dead peer never drains what is queued for it
        else:
            self._transmit()
            self._link.close_transport()

    def _require_machine(self) -> EndpointLink:
        if self._machine is None or self.closed:
            raise DialError("router_unreachable", f"no link to {self.address}")
        return self._machine

    def _fail_hello(self, error: Exception) -> None:
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(error)
