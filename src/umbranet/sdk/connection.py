"""RouterConnection: an endpoint's long-lived, multiplexed link to one router.

One TLS handshake per router, not per stream (a handshake costs ~1 ms of CPU): dials and
bindings share the link, each circuit with its own flow control. The connection checks that
the server is a router of our network (SPIFFE ID kind `router`), says HELLO, then dispatches
frames to circuits and listeners, writing everything a read produced in one go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from umbranet.aio.link import Link
from umbranet.aio.tls import link_client_context, peer_svid
from umbranet.pki import IdentityFile, PkiError
from umbranet.proto.circuit import Circuit, Closed, Opened, State
from umbranet.sdk.errors import BindError, DialError
from umbranet.sdk.stream import Stream
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

if TYPE_CHECKING:
    from umbranet.sdk.listener import Listener

log = logging.getLogger("umbranet.sdk")

# Frames for an open circuit. Only these go to a circuit by id: binding ids (BIND_OK,
# BIND_ERR) and new circuits (CONNECT) share the id field but not the number space.
_CIRCUIT_FRAMES = frozenset(
    {FrameType.ACCEPT, FrameType.HANDSHAKE, FrameType.DATA, FrameType.CREDIT, FrameType.RESET}
)


class _Entry:
    """A circuit on this link and who waits for it to open (a dialer or a listener)."""

    __slots__ = ("circuit", "dialer", "listener", "service", "stream")

    def __init__(
        self,
        circuit: Circuit,
        service: str,
        dialer: asyncio.Future[Stream] | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.circuit = circuit
        self.service = service
        self.dialer = dialer
        self.listener = listener
        self.stream: Stream | None = None


class RouterConnection:
    """The link to one router and every circuit and binding on it."""

    def __init__(
        self,
        identity: IdentityFile,
        address: str,
        clock: Callable[[], datetime],
        on_lost: Callable[[RouterConnection], None] | None = None,
    ) -> None:
        self.identity = identity
        self.address = address
        self.name = address
        self._clock = clock
        self._on_lost = on_lost
        self._link: Link | None = None
        self._hello: asyncio.Future[None] | None = None
        self._next_circuit = 1  # we are the TLS client: odd ids
        self._circuits: dict[int, _Entry] = {}
        self._bind_waiters: dict[int, asyncio.Future[int]] = {}
        self._listeners: dict[int, Listener] = {}
        # A just-opened dial's HANDSHAKE, held back so it leaves with the application's
        # first write (one TLS record and one router read instead of two); see `_cork`.
        self._corked: dict[int, list[bytes]] = {}
        self.closed = False
        self.counters: dict[str, int] = {}

    # -- lifecycle ----------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        """Open TLS to the router, verify it is a router, exchange HELLO."""
        host, _, port = self.address.rpartition(":")
        loop = asyncio.get_running_loop()
        self._hello = loop.create_future()
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: Link(self),
                    host.strip("[]"),
                    int(port),
                    ssl=link_client_context(self.identity),
                    server_hostname=host.strip("[]"),
                ),
                timeout,
            )
            await asyncio.wait_for(asyncio.shield(self._hello), timeout)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise DialError("router_unreachable", f"router {self.address}: {exc!r}") from exc

    def close(self) -> None:
        if self._link is not None:
            self._link.close(ErrorCode.NO_ERROR, "endpoint closing")
        self.closed = True

    async def link_writable(self) -> None:
        if self._link is not None:
            await self._link.writable()

    def link_blocked(self) -> asyncio.Future[None] | None:
        """What to wait for while the link's writes are paused; None when it accepts writes."""
        return self._link.write_blocked() if self._link is not None else None

    @property
    def live(self) -> bool:
        return not self.closed and self._link is not None and not self._link.closed

    # -- circuits -----------------------------------------------------------------------

    def open_circuit(
        self, service: str, make: Callable[[int], Circuit]
    ) -> tuple[int, asyncio.Future[Stream]]:
        """Start a dial: `make(circuit_id)` builds the circuit; the future yields the stream."""
        circuit_id = self._allocate()
        circuit = make(circuit_id)
        waiter: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()
        self._circuits[circuit_id] = _Entry(circuit, service, dialer=waiter)
        self.flush(circuit)
        return circuit_id, waiter

    def cancel_circuit(self, circuit_id: int) -> None:
        entry = self._circuits.pop(circuit_id, None)
        if entry is not None and entry.circuit.state is not State.CLOSED:
            entry.circuit.reset(ErrorCode.CANCELLED, "dial abandoned")
            self._write(self._outgoing(entry.circuit))

    def flush(self, circuit: Circuit) -> None:
        """Send what the circuit queued."""
        self._write(self._outgoing(circuit))
        if circuit.state is State.CLOSED and circuit.id in self._circuits:
            # Keep it until its events were delivered; `_dispatch` removes it.
            self._dispatch(circuit)

    # -- bindings -----------------------------------------------------------------------

    async def bind(self, listener: Listener, binding_id: int, ticket: str) -> int:
        """Ask the router to route dials for the listener's service here; returns expiry."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._bind_waiters[binding_id] = waiter
        self._listeners[binding_id] = listener
        fields = {"ticket": ticket, "service": listener.service}
        self._send(FrameType.BIND, binding_id, encode_control(fields))
        try:
            return await asyncio.wait_for(waiter, 10.0)
        finally:
            self._bind_waiters.pop(binding_id, None)

    def unbind(self, binding_id: int) -> None:
        if self._listeners.pop(binding_id, None) is not None:
            self._send(FrameType.UNBIND, binding_id)

    # -- LinkOwner ----------------------------------------------------------------------

    def link_made(self, link: Link) -> None:
        assert link.transport is not None
        try:
            peer = peer_svid(link.transport, self.identity.bundle, self._clock())
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
        link.send(FrameType.HELLO, 0, encode_control({"v": PROTOCOL_VERSION, "role": "endpoint"}))

    def frames_received(self, link: Link, frames: list[Frame]) -> None:
        now = self._clock()
        touched: dict[int, Circuit] = {}
        for frame in frames:
            circuit_id = frame.circuit
            entry = self._circuits.get(circuit_id)
            if entry is not None and frame.type in _CIRCUIT_FRAMES:
                entry.circuit.handle_frame(frame, now)
                touched[circuit_id] = entry.circuit
                continue
            try:
                self._control_frame(frame, now, touched)
            except WireError as exc:
                log.warning("router %s sent a bad frame: %s", self.name, exc)
                link.close(exc.code, exc.reason)
                return
        out: list[bytes] = []
        corked: list[int] = []
        for circuit_id, circuit in touched.items():
            if self._just_dialed(circuit):
                self._corked[circuit_id] = circuit.poll_transmit()
                corked.append(circuit_id)
            else:
                out.extend(self._outgoing(circuit))
        self._write(out)
        for circuit in touched.values():
            self._dispatch(circuit)
        for circuit_id in corked:
            # The dialer's task runs within two loop turns (future -> wait_for -> task);
            # whatever it has not sent by then goes out anyway.
            asyncio.get_running_loop().call_soon(self._uncork, circuit_id, 2)

    def link_lost(self, link: Link, error: BaseException | None) -> None:
        self.closed = True
        self._corked.clear()
        self._fail_hello(DialError("router_unreachable", f"link to {self.address} lost"))
        for entry in list(self._circuits.values()):
            circuit = entry.circuit
            if circuit.state is not State.CLOSED:
                circuit.reset(ErrorCode.PEER_GONE, "link to the router dropped")
                circuit.poll_transmit()
            self._dispatch(circuit)
        for waiter in self._bind_waiters.values():
            if not waiter.done():
                waiter.set_exception(BindError("router_unreachable", "link lost"))
        for listener in list(self._listeners.values()):
            listener.connection_lost(self)
        self._listeners.clear()
        if self._on_lost is not None:
            self._on_lost(self)

    # -- internals ----------------------------------------------------------------------

    def _control_frame(self, frame: Frame, now: datetime, touched: dict[int, Circuit]) -> None:
        ftype = frame.type
        if ftype == FrameType.HELLO:
            decode_control(frame.payload).int_field("v", 0, 65535)
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(None)
        elif ftype == FrameType.CONNECT:
            self._connect(frame, now, touched)
        elif ftype in (FrameType.BIND_OK, FrameType.BIND_ERR):
            waiter = self._bind_waiters.get(frame.circuit)
            if waiter is None or waiter.done():
                if ftype == FrameType.BIND_ERR:
                    self._binding_revoked(frame)
                return
            if ftype == FrameType.BIND_OK:
                waiter.set_result(decode_control(frame.payload).int_field("expires_at"))
            else:
                code, reason = decode_error(frame.payload)
                waiter.set_exception(BindError(code.code, reason))
        elif ftype == FrameType.GOAWAY:
            code, reason = decode_error(frame.payload)
            log.info("router %s said goodbye: %s %s", self.name, code.code, reason)
        elif ftype == FrameType.PING:
            self._send(FrameType.PONG, 0, bytes(frame.payload[:64]))
        elif ftype == FrameType.PONG:
            self._count("pong")
        elif ftype in _CIRCUIT_FRAMES:
            # A circuit we already ended (reset, cancelled dial) races with its last frames.
            self._count("frames_unknown_circuit")
        else:
            raise WireError(ErrorCode.PROTOCOL_ERROR, f"unexpected {FrameType(ftype).name}")

    def _binding_revoked(self, frame: Frame) -> None:
        """The router dropped a live binding (e.g. access was revoked): tell its listener."""
        listener = self._listeners.pop(frame.circuit, None)
        if listener is not None:
            code, reason = decode_error(frame.payload)
            log.warning(
                "binding for %s dropped by the router: %s %s", listener.service, code.code, reason
            )
            listener.binding_lost(self, code.code, reason)

    def _connect(self, frame: Frame, now: datetime, touched: dict[int, Circuit]) -> None:
        """A router brings a dialer to one of our bindings."""
        ctl = decode_control(frame.payload)
        listener = self._listeners.get(ctl.int_field("binding"))
        if listener is None or frame.circuit % 2 or frame.circuit in self._circuits:
            self._count("connect_refused")
            self._send(
                FrameType.RESET,
                frame.circuit,
                encode_error(ErrorCode.REFUSED, "no such binding here"),
            )
            return
        circuit = Circuit.accept(frame.circuit, frame, listener.handshake())
        self._circuits[frame.circuit] = _Entry(circuit, listener.service, listener=listener)
        touched[frame.circuit] = circuit

    def _dispatch(self, circuit: Circuit) -> None:
        """Deliver the circuit's events: opened streams, wake-ups, and its end."""
        entry = self._circuits.get(circuit.id)
        if entry is None:
            return
        while (event := circuit.poll_event()) is not None:
            if isinstance(event, Opened):
                if entry.listener is not None:
                    entry.stream = entry.listener.new_stream(self, circuit)
                else:
                    entry.stream = Stream(self, circuit, entry.service)
                if entry.dialer is not None and not entry.dialer.done():
                    entry.dialer.set_result(entry.stream)
                elif entry.listener is not None:
                    entry.listener.deliver(entry.stream)
            elif isinstance(event, Closed) and entry.stream is None:
                self._refused(entry, event)
        # Forget a closed circuit before waking its stream: a closing stream flushes from
        # `notify`, and `flush` dispatches circuits it still finds here (endless recursion).
        if circuit.state is State.CLOSED:
            self._circuits.pop(circuit.id, None)
        if entry.stream is not None:
            entry.stream.notify()

    def _refused(self, entry: _Entry, event: Closed) -> None:
        """A circuit closed before it opened: a refused dial or a failed accept."""
        self._count(event.code.code)
        if entry.dialer is not None and not entry.dialer.done():
            entry.dialer.set_exception(DialError(event.code.code, event.reason))
        if entry.listener is not None:
            entry.listener.refused(event.code.code, event.reason)

    def _allocate(self) -> int:
        while True:
            self._next_circuit = (self._next_circuit + 2) % (1 << 32) or 1
            if self._next_circuit not in self._circuits:
                return self._next_circuit

    def _outgoing(self, circuit: Circuit) -> list[bytes]:
        """What to write for `circuit`: its held-back handshake first, then its new frames."""
        held = self._corked.pop(circuit.id, None) if self._corked else None
        if held is None:
            return circuit.poll_transmit()
        held.extend(circuit.poll_transmit())
        return held

    def _just_dialed(self, circuit: Circuit) -> bool:
        """Our dial opened in this read and its stream is not handed out yet."""
        entry = self._circuits.get(circuit.id)
        return (
            entry is not None
            and entry.dialer is not None
            and entry.stream is None
            and circuit.state is State.OPEN
            and circuit.id not in self._corked
        )

    def _uncork(self, circuit_id: int, turns: int) -> None:
        if circuit_id not in self._corked:
            return
        if turns > 1:
            asyncio.get_running_loop().call_soon(self._uncork, circuit_id, turns - 1)
            return
        self._write(self._corked.pop(circuit_id))

    def _send(self, ftype: FrameType, circuit: int, payload: bytes = b"") -> None:
        if self._link is not None:
            self._link.send(ftype, circuit, payload)

    def _write(self, buffers: list[bytes]) -> None:
        if buffers and self._link is not None:
            self._link.write_many(buffers)

    def _fail_hello(self, error: Exception) -> None:
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(error)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1
