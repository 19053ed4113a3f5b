"""The nodes of the simulated network: a router around a real `Switch`, an endpoint around a
real `EndpointLink` per router. Each is driven the way its asyncio shell drives it
(`router/server.py`, `sdk/connection.py`): feed the input, write what the machine queued,
deliver its events, re-arm its timer at `poll_timeout()`; only the carrier and the clock are
simulated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from umbranet.pki import IdentityFile
from umbranet.proto.circuit import Circuit
from umbranet.proto.e2e import DialerHandshake, HostHandshake, LocalCredentials
from umbranet.proto.endpoint import (
    AcceptFailed,
    BindFailed,
    BindingLost,
    Bound,
    Dialed,
    DialFailed,
    EndpointLink,
    Event,
    Incoming,
    LinkDown,
    SessionDetached,
    SessionResumed,
)
from umbranet.proto.flow import DEFAULT_WINDOW
from umbranet.proto.link import LinkTimers
from umbranet.proto.sessions import Sessions
from umbranet.router.links import SwitchLink
from umbranet.router.quotas import SwitchLimits
from umbranet.router.switch import Switch
from umbranet.testing.simcarrier import Port, Timer, reads
from umbranet.testing.simstream import Handler, SimListener, SimStream
from umbranet.wire import ErrorCode, Frame, FrameType, WireError

if TYPE_CHECKING:
    from umbranet.testing.simnet import SimNet

__all__ = ["RouterLink", "SimEndpoint", "SimRouter"]

# One input never needs more rounds than this (each round writes, delivers, wakes streams).
_MAX_ROUNDS = 10_000


class SimRouter:
    """A router: one `Switch`, a link session per carrier, the shell's close rules."""

    def __init__(self, net: SimNet, name: str, spiffe_id: str, limits: SwitchLimits | None) -> None:
        self.net = net
        self.name = name
        self.spiffe_id = spiffe_id
        self.alive = True
        self.switch = Switch(lambda: net.network.bundle, name, limits)
        self._links: dict[Port, SwitchLink] = {}
        self._timers: dict[Port, Timer] = {}
        self._timer = Timer(net, self._switch_due)

    def attach(self, port: Port, identity: str, peer_kind: str, *, opener: bool) -> SwitchLink:
        """A carrier whose TLS handshake passed (the peer's SVID kind is `peer_kind`)."""
        now = self.net.clock.now()
        link = self.switch.add_link(port, identity, peer_kind, now, opener=opener)
        if opener:  # the side that dialed says HELLO first
            self.net.send(port, b"".join(link.session.poll_transmit()))
        self._links[port] = link
        self._timers[port] = Timer(self.net, lambda: self._link_due(port))
        self._timers[port].arm(link.session.poll_timeout())
        return link

    def link_to(self, other: SimRouter | SimEndpoint) -> SwitchLink:
        """This router's link to a neighbour (for routes and assertions)."""
        for port, link in self._links.items():
            if port.peer.node is other:
                return link
        raise LookupError(f"{self.name} has no live link to {other.name}")

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.switch.counters)

    def stop(self) -> None:
        """Shut down as `Router.stop` does: GOAWAY `shutting_down` on every link and close
        them all; only then does each link's loss reach the switch (writes to links already
        closed go nowhere)."""
        self.net.note(self.name, "", "STOP", "router stopping")
        ports = list(self._links)
        for port in ports:
            self._links[port].session.close(ErrorCode.SHUTTING_DOWN, "router stopping")
            self._close(port, abort=False, forget=False)
        for port in ports:
            self._gone(port)
        self._timer.cancel()

    # -- Node -----------------------------------------------------------------------------

    def receive(self, port: Port, data: bytes) -> None:
        try:
            for frames in reads(port.decoder, data):
                link = self._links.get(port)
                if link is None:
                    return  # closed by an earlier read of this write
                closing = self.switch.frames(
                    link, self.net.arrived(port, frames), self.net.clock.now()
                )
                self._flush()  # joins what was relayed: the frames' views die with this read
                if closing is not None:
                    code, reason = closing
                    self.net.note(
                        self.name, port.peer.node.name, "LINK_DOWN", f"{code.code}: {reason}"
                    )
                    self._close(port, abort=False)
                    return
                self._timer.arm(self.switch.poll_timeout())
                timer = self._timers.get(port)
                if timer is None:
                    return  # the switch shed this very link (over its memory budget)
                timer.arm(link.session.poll_timeout())
        except WireError as exc:  # bytes that are no frame stream: the link is over
            link = self._links.get(port)
            if link is not None:
                link.session.close(exc.code, exc.reason)
                self._close(port, abort=False)

    def carrier_lost(self, port: Port) -> None:
        if port in self._links:
            self._gone(port)

    # -- the shell's rules ------------------------------------------------------------------

    def _link_due(self, port: Port) -> None:
        link = self._links.get(port)
        if link is None or not self.alive:
            return
        closing = self.switch.link_timeout(link, self.net.clock.now())
        self._flush()
        if closing is None:
            self._timers[port].arm(link.session.poll_timeout())
            return
        code, reason = closing
        self.net.note(self.name, port.peer.node.name, "LINK_DOWN", f"{code.code}: {reason}")
        # A silent peer never drains what is queued for it: abort, as the shell does.
        self._close(port, abort=code is ErrorCode.PEER_GONE)

    def _switch_due(self) -> None:
        if not self.alive:
            return
        self.switch.handle_timeout(self.net.clock.now())
        self._flush()
        self._timer.arm(self.switch.poll_timeout())

    def _flush(self) -> None:
        """Write what the switch queued, link by link in a fixed order (a set's order would
        differ between runs, and so would the order of same-time deliveries)."""
        written = self.switch.poll_transmit()
        written.sort(key=lambda item: _port(item[0]).name)
        for link, buffers in written:
            self.net.send(_port(link), b"".join(buffers))
        for shed in self.switch.poll_shed():
            port = _port(shed)
            self.net.note(self.name, port.peer.node.name, "LINK_DOWN", "shed: over budget")
            self.net.send(port, b"".join(shed.session.poll_transmit()))
            self.net.close(port, abort=False)
            self._forget(port)

    def _close(self, port: Port, *, abort: bool, forget: bool = True) -> None:
        """Close a link whose GOAWAY (if any) its session has queued, then forget it."""
        link = self._links.get(port)
        if link is not None and not abort:
            self.net.send(port, b"".join(link.session.poll_transmit()))
        self.net.close(port, abort=abort)
        if forget:
            self._gone(port)

    def _gone(self, port: Port) -> None:
        link = self._links.get(port)
        if link is None:
            return
        self._forget(port)
        self.switch.link_gone(link)  # every circuit's other side is told why
        self._flush()

    def _forget(self, port: Port) -> None:
        self._links.pop(port, None)
        timer = self._timers.pop(port, None)
        if timer is not None:
            timer.cancel()


def _is_unbind(frame: Frame) -> bool:
    return frame.type == FrameType.UNBIND


def _port(link: SwitchLink) -> Port:
    handle: Hashable = link.handle
    assert isinstance(handle, Port)
    return handle


class RouterLink:
    """An endpoint's link to one router: the machine, its carrier end, its streams."""

    def __init__(self, router: str, port: Port, machine: EndpointLink, timer: Timer) -> None:
        self.router = router
        self.port = port
        self.machine = machine
        self.timer = timer
        self.streams: dict[int, SimStream] = {}
        self.down: tuple[str, str] | None = None  # (code, reason) once the link ended


class SimEndpoint:
    """An SDK or agent: dials and listens through its links to routers."""

    def __init__(
        self, net: SimNet, name: str, identity: IdentityFile, timers: LinkTimers | None
    ) -> None:
        self.net = net
        self.name = name
        self.identity = identity
        self.timers = timers
        self.alive = True
        self.credentials = LocalCredentials(
            identity.cert_pem, identity.noise_private_key, identity.bundle
        )
        self.links: dict[str, RouterLink] = {}  # router name -> link
        self.listeners: dict[int, SimListener] = {}
        self._by_port: dict[Port, RouterLink] = {}
        self._busy = False
        self._pending: list[RouterLink] = []
        # Sessions that may move to another router when a path fails (proto/sessions.py).
        # Off unless a test turns it on (`enable_resume`): a failed path ends the stream.
        # Its name is its host instance id: unique per endpoint, and it leaves the
        # network's seeded randomness alone.
        self.sessions = Sessions(deadline=0, entropy=net.rng.randbytes, instance=name)
        self.resume_dial_timeout = 5.0
        self._sessions_timer = Timer(net, self._sessions_due)

    def attach(self, port: Port, router: SimRouter) -> RouterLink:
        machine = EndpointLink(name=self.name, now=self.net.clock.now(), timers=self.timers)
        link = RouterLink(router.name, port, machine, Timer(self.net, lambda: self._due(port)))
        self.links[router.name] = link
        self._by_port[port] = link
        self._step(link)
        return link

    # -- the application's side -----------------------------------------------------------

    def dial(
        self,
        service: str,
        *,
        router: SimRouter | None = None,
        window: int = DEFAULT_WINDOW,
        timeout: float = 10.0,
        ticket: str | None = None,
        in_session: bool = False,
    ) -> SimStream:
        """Open a circuit to `service` (through `router`, else the first live link);
        `in_session`: inside the session an earlier dial to it opened, if there is one (an
        OPEN, no Noise handshake; deferred, so the first write rides with it, as the SDK
        does), else with a full handshake."""
        link = self._link(router)
        token = ticket or self.net.ticket(self.identity.spiffe_id, service, "dial")
        key = self.sessions.key_for(service) if in_session else None
        make: Callable[[int], Circuit]
        if key is not None:
            make = self.sessions.opener(key, service, token, window=window)
        else:
            handshake = DialerHandshake(service, token, self.credentials)
            make = functools.partial(
                Circuit.dial, service=service, handshake=handshake, window=window
            )

        circuit = link.machine.dial(make, self.net.clock.now(), timeout)
        stream = SimStream(self, link, service, circuit)
        circuit.owner = stream
        link.streams[circuit.id] = stream
        self.net.note(self.name, link.router, "DIAL_START", f"service={service}", circuit.id)
        self._step(link)
        return stream

    def listen(
        self, service: str, handler: Handler | None = None, *, window: int = DEFAULT_WINDOW
    ) -> SimListener:
        """Host `service` at every router this endpoint links to."""
        binding_id = len(self.listeners) + 1
        listener = SimListener(service, binding_id, handler)
        self.listeners[binding_id] = listener
        token = self.net.ticket(self.identity.spiffe_id, service, "bind")

        def accept(circuit_id: int, connect: Frame) -> Circuit:
            handshake = HostHandshake(service, token, self.credentials)
            now = self.net.clock.now()
            return self.sessions.accept(circuit_id, connect, handshake, window, now)

        for link in self.links.values():
            if link.down is None:
                link.machine.bind(
                    binding_id,
                    service,
                    token,
                    accept,
                    self.net.clock.now(),
                    instance=self.sessions.instance,
                )
                self._step(link)
        return listener

    def unbind(self, listener: SimListener, *, silently: bool = False) -> None:
        """Stop hosting `listener`'s service at every router; `silently`: its UNBINDs are
        lost on the way, so the routers keep offering it dials (which it refuses)."""
        for name, link in self.links.items():
            if silently:
                self.net.drop_frames(self, self.net.routers[name], _is_unbind)
            link.machine.unbind(listener.binding_id)
            self._step(link)

    def enable_resume(self, deadline: float = 30.0) -> None:
        """Streams whose path fails move to another path (within `deadline` seconds)."""
        self.sessions.deadline = deadline

    def close(self, router: SimRouter | None = None) -> None:
        """Leave: GOAWAY `no_error` on the link to `router`, or on every link."""
        for link in self.links.values():
            if link.down is None and (router is None or link.router == router.name):
                link.machine.close()
                self._step(link)

    def flush(self, link: RouterLink, circuit: Circuit) -> None:
        """Send what a stream's operation queued on its circuit."""
        link.machine.flush(circuit)
        self._step(link)

    def note_end(self, stream: SimStream) -> None:
        end = stream.ended
        assert end is not None
        note = f"{end.code}: {end.reason}"
        self.net.note(self.name, stream.link.router, "STREAM_END", note, stream.circuit.id)

    # -- Node -----------------------------------------------------------------------------

    def receive(self, port: Port, data: bytes) -> None:
        link = self._by_port.get(port)
        if link is None:
            return
        try:
            for frames in reads(port.decoder, data):
                if link.down is not None:
                    return
                link.machine.handle_frames(self.net.arrived(port, frames), self.net.clock.now())
                self._step(link)
        except WireError as exc:  # bytes that are no frame stream: the link is over
            link.machine.close(exc.code, exc.reason)
            self._step(link)

    def carrier_lost(self, port: Port) -> None:
        link = self._by_port.get(port)
        if link is None or link.down is not None:
            return
        link.down = ("router_unreachable", "link lost")
        link.timer.cancel()
        link.machine.link_lost()
        self._step(link)

    # -- the driver -----------------------------------------------------------------------

    def _due(self, port: Port) -> None:
        link = self._by_port.get(port)
        if link is None or link.down is not None or not self.alive:
            return
        link.machine.handle_timeout(self.net.clock.now())
        self._step(link)

    def _step(self, link: RouterLink) -> None:
        """After any input: write, deliver events, wake streams; repeat while they act (a
        handler's write queues more), then re-arm the timer. Re-entered from a handler, it
        only notes the link: the outer call picks its output up."""
        if link not in self._pending:
            self._pending.append(link)
        if self._busy:
            return
        self._busy = True
        try:
            for _ in range(_MAX_ROUNDS):
                if not self._pending:
                    break
                current = self._pending.pop(0)
                self._rounds(current)
                if current.down is None:
                    current.timer.arm(current.machine.poll_timeout())
        finally:
            self._busy = False

    def _rounds(self, link: RouterLink) -> None:
        machine = link.machine
        for _ in range(_MAX_ROUNDS):
            busy = False
            out = machine.poll_transmit()
            if out:
                self.net.send(link.port, b"".join(out))
                busy = True
            while (event := machine.poll_event()) is not None:
                self._event(link, event)
                busy = True
            for circuit in machine.take_touched():
                stream = link.streams.get(circuit.id)
                if stream is not None:
                    stream.wake()
                busy = True
            if not busy:
                return

    def _event(self, link: RouterLink, event: Event) -> None:
        net, router = self.net, link.router
        if isinstance(event, Dialed):
            stream = link.streams.get(event.circuit.id)
            net.note(self.name, router, "DIALED", "", event.circuit.id)
            self.sessions.opened(event.circuit)
            if stream is not None:
                stream.opened = True
        elif isinstance(event, SessionDetached | SessionResumed):
            self._moved(link, event)
        elif isinstance(event, DialFailed):
            net.note(self.name, router, "DIAL_FAILED", event.code, event.circuit_id)
            stream = link.streams.get(event.circuit_id)
            if stream is not None:
                stream.fail(event.code, event.reason)
        elif isinstance(event, Incoming):
            self._incoming(link, event)
        elif isinstance(event, AcceptFailed | BindFailed | BindingLost):
            what = type(event).__name__.upper()
            net.note(self.name, router, what, f"{event.code}: {event.reason}")
            listener = self.listeners.get(event.binding_id)
            if listener is not None:
                listener.refused.append((event.code, event.reason))
        elif isinstance(event, Bound):
            net.note(self.name, router, "BOUND", f"binding={event.binding_id}")
            listener = self.listeners.get(event.binding_id)
            if listener is not None:
                listener.bound.append(router)
        elif isinstance(event, LinkDown):
            self._link_down(link, event)

    def _moved(self, link: RouterLink, event: SessionDetached | SessionResumed) -> None:
        """A stream's session left `link` (its path failed) or arrived on it (resumed)."""
        circuit = event.circuit
        stream = circuit.owner
        assert isinstance(stream, SimStream)
        now = self.net.clock.now()
        if isinstance(event, SessionDetached):
            self.net.note(self.name, link.router, "DETACHED", event.code, circuit.id)
            self.sessions.detached(circuit, now)
            stream.wake()  # it may have ended (moving off), or only pauses
            self._resume_due()
        else:
            self.net.note(self.name, link.router, "RESUMED", "", circuit.id)
            self.sessions.resumed(circuit)
            stream.link = link
            link.streams[circuit.id] = stream
            stream.wake()
        self._sessions_timer.arm(self.sessions.poll_timeout())

    def _resume_due(self) -> None:
        """Put each detached dialer session on a new circuit through a live link."""
        now = self.net.clock.now()
        for circuit in self.sessions.due(now):
            live = [link for link in self.links.values() if link.down is None]
            if not live:
                continue
            link = live[0]
            stream = circuit.owner
            assert isinstance(stream, SimStream)
            token = self.net.ticket(self.identity.spiffe_id, circuit.service, "dial")
            nonce = self.sessions.nonce()
            link.machine.resume(circuit, token, nonce, now, self.resume_dial_timeout)
            stream.link = link
            link.streams[circuit.id] = stream
            self.net.note(self.name, link.router, "RESUME_START", "", circuit.id)
            self._step(link)

    def _sessions_due(self) -> None:
        if not self.alive:
            return
        for circuit in self.sessions.handle_timeout(self.net.clock.now()):
            stream = circuit.owner
            if isinstance(stream, SimStream):
                stream.wake()
        self._resume_due()
        self._sessions_timer.arm(self.sessions.poll_timeout())

    def _incoming(self, link: RouterLink, event: Incoming) -> None:
        listener = self.listeners.get(event.binding_id)
        circuit = event.circuit
        self.net.note(self.name, link.router, "INCOMING", f"binding={event.binding_id}", circuit.id)
        if listener is None:
            circuit.reset(ErrorCode.REFUSED, "no longer hosting this service")
            link.machine.flush(circuit)
            return
        stream = SimStream(self, link, listener.service, circuit)
        circuit.owner = stream
        self.sessions.opened(circuit)
        stream.opened = True
        stream.on_change = listener.handler
        link.streams[circuit.id] = stream
        listener.accepted.append(stream)
        if listener.handler is not None:
            listener.handler(stream)  # before any read: a handler may pause reading

    def _link_down(self, link: RouterLink, event: LinkDown) -> None:
        """The machine ended the link: close the carrier as the SDK shell does, then every
        circuit on it ends (`link_lost`: peer_gone)."""
        self.net.note(self.name, link.router, "LINK_DOWN", f"{event.code}: {event.reason}")
        link.down = (event.code, event.reason)
        link.timer.cancel()
        if event.code == "peer_silent":
            self.net.close(link.port, abort=True)  # a dead peer never drains its queue
        else:
            self.net.send(link.port, b"".join(link.machine.poll_transmit()))
            self.net.close(link.port, abort=False)
        link.machine.link_lost()

    def _link(self, router: SimRouter | None) -> RouterLink:
        if router is not None:
            return self.links[router.name]
        for link in self.links.values():
            if link.down is None:
                return link
        raise LookupError(f"{self.name} has no live link to a router")
