"""SimNet: a whole Umbranet network in one process and in virtual time, on the real machines.

Routers are real `Switch`es, endpoints hold a real `EndpointLink` per router and real
`Circuit`s (Noise handshake, AEAD, flow control); links are byte pipes whose bytes are the
real encoder's output, parsed by a `FrameDecoder` on arrival. Nothing runs on its own: one
event queue ordered by virtual time (a `FakeClock`) delivers bytes and fires each machine's
timer at its `poll_timeout()`, so a 15-second keepalive deadline passes in milliseconds,
and one seeded `random.Random` decides every delay, so a seed replays exactly.

    net = SimNet(seed=7)
    r1 = net.router("r1")
    web = net.endpoint("web", via=[r1]); alice = net.endpoint("alice", via=[r1])
    web.listen("echo", echo); s = alice.dial("echo")
    s.write(b"hi"); s.write_eof()
    net.run_until(lambda: s.ended is not None, within=1.0)
    assert s.finished and s.read() == b"hi"; print(net.trace.render())

The carrier is what TLS over TCP gives the shells: an ordered, reliable byte stream. So the
faults are the ones such a stream can show, never a hole in the middle of it:

- `latency` and `jitter` per link (seeded); `loss`: the chance that a write was lost on the
  wire and arrives `rto` later (TCP retransmits; the stream stays whole and in order);
- `partition(a, b)`: nothing crosses until `heal(a, b)`; what was written meanwhile waits
  (retransmitted) and arrives after the heal, unless an end gave up on the link before;
- `link_down(a, b)`: the carrier breaks (the kernel reports a reset): both ends learn at once;
- `kill(node)`: a dead peer (a hung process, a dropped NAT mapping): it stops reading,
  writing and running timers but never closes anything; only keepalive can tell;
- `drop_frames(src, dst, predicate)`: a misbehaving peer: matching frames vanish on arrival.

Ending a link is modelled as the shells do it: a clean close delivers what was written and
then the close; an abort (a silent peer) throws away what had not yet arrived.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Hashable

from umbranet.controller.service.links import MeshPolicy, RouterReport, routes_for
from umbranet.pki import IdentityFile, SpiffeId
from umbranet.pki.tickets import Action
from umbranet.proto.link import LinkTimers
from umbranet.router.links import LinkKind, Route
from umbranet.router.quotas import SwitchLimits
from umbranet.testing.clock import FakeClock
from umbranet.testing.network import LocalNetwork
from umbranet.testing.simcarrier import Carrier, Node, Port, reads
from umbranet.testing.simnodes import SimEndpoint, SimRouter
from umbranet.testing.simstream import SimListener, SimStream, StreamEnd, echo, hold, sink
from umbranet.testing.simtrace import Trace, TraceRecord, describe_frame
from umbranet.wire import Frame

__all__ = [
    "Carrier",
    "Port",
    "SimEndpoint",
    "SimListener",
    "SimNet",
    "SimRouter",
    "SimStream",
    "SimTimeout",
    "StreamEnd",
    "Trace",
    "TraceRecord",
    "echo",
    "hold",
    "sink",
]

# What one run may do before the network is declared stuck (a bound, not a budget to tune).
MAX_EVENTS = 2_000_000


class SimTimeout(AssertionError):
    """`run_until`'s condition did not hold within its virtual-time bound."""


class SimNet:
    """A simulated network: nodes, carriers, faults, virtual time, a trace. See the module doc."""

    def __init__(
        self,
        seed: int = 0,
        clock: FakeClock | None = None,
        network: LocalNetwork | None = None,
    ) -> None:
        self.clock = clock or FakeClock()
        self.network = network or LocalNetwork(now=self.clock.wall)
        self.rng = random.Random(seed)
        self.trace = Trace()
        self.start = self.clock.mono
        self.routers: dict[str, SimRouter] = {}
        self.endpoints: dict[str, SimEndpoint] = {}
        self.carriers: list[Carrier] = []
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    # -- building the network -----------------------------------------------------------

    def router(self, name: str, limits: SwitchLimits | None = None) -> SimRouter:
        spiffe_id = str(SpiffeId.for_identity(self.network.trust_domain, "router", name))
        router = SimRouter(self, name, spiffe_id, limits)
        self.routers[name] = router
        return router

    def endpoint(
        self,
        name: str,
        *,
        attributes: tuple[str, ...] = (),
        via: list[SimRouter] | tuple[SimRouter, ...] = (),
        latency: float = 0.005,
        timers: LinkTimers | None = None,
        identity: IdentityFile | None = None,
    ) -> SimEndpoint:
        """An endpoint (an SDK or agent) with a link to each router in `via`; `identity`:
        another endpoint's (a second process of one workload), else its own."""
        if identity is None:
            identity = self.network.identity(name, attributes=attributes, now=self.clock.wall)
        endpoint = SimEndpoint(self, name, identity, timers)
        self.endpoints[name] = endpoint
        for router in via:
            self.connect(endpoint, router, latency=latency)
        return endpoint

    def connect(
        self,
        endpoint: SimEndpoint,
        router: SimRouter,
        *,
        latency: float = 0.005,
        jitter: float = 0.0,
        loss: float = 0.0,
        rto: float = 0.2,
    ) -> Carrier:
        """An endpoint's link to a router (its TLS handshake is taken as done)."""
        carrier = self._carrier(endpoint, router, latency, jitter, loss, rto)
        router.attach(carrier.b, endpoint.identity.spiffe_id, "workload", opener=False)
        endpoint.attach(carrier.a, router)
        return carrier

    def link(
        self,
        opener: SimRouter,
        acceptor: SimRouter,
        *,
        latency: float = 0.01,
        jitter: float = 0.0,
        loss: float = 0.0,
        rto: float = 0.2,
    ) -> Carrier:
        """A router-to-router link; `opener` connected (it says HELLO first, odd ids)."""
        carrier = self._carrier(opener, acceptor, latency, jitter, loss, rto)
        acceptor.attach(carrier.b, opener.spiffe_id, "router", opener=False)
        opener.attach(carrier.a, acceptor.spiffe_id, "router", opener=True)
        return carrier

    def route(self, router: SimRouter, service: str, via: SimRouter, cost: float = 1.0) -> None:
        """A static route: dials for `service` at `router` go to its neighbour `via`."""
        router.switch.routes.add_route(service, router.link_to(via), cost)

    def mesh_routes(
        self, admin_costs: dict[str, float] | None = None, *, policy: MeshPolicy | None = None
    ) -> None:
        """Install in every router the routes the controller would compute (`routes_for`)
        from reports of the network as it is now: bound services, ready router links and
        their measured RTTs. Replaces each router's remote routes, as a report's answer does."""
        reports: dict[str, RouterReport] = {}
        for router in self.routers.values():
            links = {
                link.identity: None if link.session.rtt is None else link.session.rtt * 1000
                for link in router.switch.links
                if link.kind is LinkKind.ROUTER and link.session.ready
            }
            terminators = router.switch.terminators
            services = frozenset(b.service for b in terminators.all())
            reports[router.spiffe_id] = RouterReport(
                services, links, self.now, router.switch.circuits, terminators.standby_ranks()
            )
        costs = {self.routers[name].spiffe_id: c for name, c in (admin_costs or {}).items()}
        policy = policy or MeshPolicy(router_costs=costs)
        for router in self.routers.values():
            by_peer = {
                link.identity: link
                for link in router.switch.links
                if link.kind is LinkKind.ROUTER and link.session.ready
            }
            table: dict[str, dict[Hashable, float]] = {}
            for route in routes_for(router.spiffe_id, reports, policy=policy):
                table.setdefault(route.service, {})[by_peer[route.via]] = route.cost
            router.switch.routes.replace_remote(table)

    def revoke(self, router: SimRouter, holder: str, action: str, service: str) -> int:
        """Close, at `router`, every circuit end that `holder` (an endpoint's name) holds
        there by an `action` ticket for `service`, as a re-check round that denied it would
        (`Router.apply_epoch`). Returns how many were closed."""
        switch = router.switch
        closed = 0
        for identity, svc, act, handle in switch.live_grants(list(switch.links)):
            if (
                isinstance(handle, Route)
                and identity.rsplit("/", 1)[-1] == holder
                and (svc, act) == (service, action)
            ):
                switch.revoke(handle, "no longer allowed")
                closed += 1
        router._flush()  # the shell writes what the round queued
        self.note(router.name, "", "REVOKE", f"{holder} {action} {service}: {closed}")
        return closed

    def ticket(self, spiffe_id: str, service: str, action: str) -> str:
        """A ticket from the network's signer, issued now (virtual wall clock)."""
        _, token = self.network.signer.sign_ticket(
            spiffe_id,
            service,
            Action(action),
            self.clock.wall,
            self.network.ticket_lifetime,
            attributes=self.network.attributes.get(spiffe_id, ()),
            epoch=self.network.epoch,
        )
        return token

    # -- faults -------------------------------------------------------------------------

    def partition(self, a: Node, b: Node) -> None:
        """Nothing crosses between `a` and `b` until `heal`."""
        for carrier in self._between(a, b):
            carrier.partitioned = True
        self.note(a.name, b.name, "PARTITION")

    def heal(self, a: Node, b: Node) -> None:
        """Bytes flow again; what waited arrives one latency from now, in order."""
        for carrier in self._between(a, b):
            carrier.partitioned = False
            earliest = self.clock.mono + carrier.latency
            for port in (carrier.a, carrier.b):
                port.inbound = deque((max(at, earliest), data) for at, data in port.inbound)
                self._pump_later(port)
        self.note(a.name, b.name, "HEAL")

    def link_down(self, a: Node, b: Node) -> None:
        """The carrier breaks: what was in flight is lost, both ends are told now."""
        self.note(a.name, b.name, "LINK_DOWN", "carrier broken")
        for carrier in self._between(a, b):
            carrier.down = True
            for port in (carrier.a, carrier.b):
                port.inbound.clear()
            for port in (carrier.a, carrier.b):
                if port.open:
                    port.open = False
                    if port.node.alive:
                        port.node.carrier_lost(port)

    def kill(self, node: Node) -> None:
        """`node` stops reading, writing and keeping time, and never says so."""
        node.alive = False
        self.note(node.name, "", "KILLED", "stops processing; links stay open")

    def drop_frames(self, src: Node, dst: Node, predicate: Callable[[Frame], bool]) -> None:
        """Frames from `src` matching `predicate` vanish on arrival at `dst`."""
        for carrier in self._between(src, dst):
            port = carrier.a if carrier.a.node is dst else carrier.b
            port.filters.append(predicate)

    # -- time ---------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Virtual seconds since the network was made."""
        return self.clock.mono - self.start

    def run_for(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass, handling everything due meanwhile."""
        self._run(self.clock.mono + seconds, None)

    def run_until(self, condition: Callable[[], object], within: float) -> float:
        """Run until `condition()` is true; returns the virtual seconds it took. Raises
        SimTimeout (with the end of the trace) if it is still false after `within`."""
        started = self.clock.mono
        if self._run(started + within, condition):
            return self.clock.mono - started
        tail = self.trace.render(last=40)
        raise SimTimeout(f"condition still false after {within}s of virtual time\n{tail}")

    def schedule(self, at: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, action))

    def _run(self, end: float, condition: Callable[[], object] | None) -> bool:
        if condition is not None and condition():
            return True
        for _ in range(MAX_EVENTS):
            if not self._queue or self._queue[0][0] > end:
                self.clock.advance(max(0.0, end - self.clock.mono))
                return False
            at, _, action = heapq.heappop(self._queue)
            if at > self.clock.mono:
                self.clock.advance(at - self.clock.mono)
            action()
            if condition is not None and condition():
                return True
        raise RuntimeError(f"the simulation handled {MAX_EVENTS} events without settling")

    # -- carriers -----------------------------------------------------------------------

    def send(self, port: Port, data: bytes) -> None:
        """`port`'s node writes `data` towards the far end."""
        carrier = port.carrier
        if not data or not port.open or carrier.down:
            return
        self._enqueue(port.peer, data)

    def close(self, port: Port, *, abort: bool) -> None:
        """`port`'s node closes its end: the far end learns after what was written (or, on
        an abort, after nothing more: what had not arrived is thrown away)."""
        if not port.open:
            return
        port.open = False
        if port.carrier.down:
            return
        if abort:
            port.peer.inbound.clear()
        self._enqueue(port.peer, None)

    def arrived(self, port: Port, frames: list[Frame], *, unread: bool = False) -> list[Frame]:
        """Trace the frames that reached `port`; returns those its node gets to read (not
        those a filter removes; none when the node is dead, `unread`)."""
        src, dst = port.peer.node.name, port.node.name
        kept: list[Frame] = []
        for frame in frames:
            what, note = describe_frame(frame)
            if unread:
                note = f"unread ({dst} is dead)"
            elif any(drop(frame) for drop in port.filters):
                note = "dropped"
            else:
                kept.append(frame)
            self.trace.add(TraceRecord(self.now, src, dst, what, frame.circuit, note, frame=True))
        return kept

    def note(self, src: str, dst: str, what: str, note: str = "", circuit: int = 0) -> None:
        self.trace.add(TraceRecord(self.now, src, dst, what, circuit, note))

    def _enqueue(self, port: Port, data: bytes | None) -> None:
        carrier = port.carrier
        delay = carrier.latency
        if carrier.jitter:
            delay += self.rng.uniform(0.0, carrier.jitter)
        if carrier.loss and self.rng.random() < carrier.loss:
            delay += carrier.rto
        at = self.clock.mono + delay
        if port.inbound:
            at = max(at, port.inbound[-1][0])  # a byte stream: nothing overtakes
        port.inbound.append((at, data))
        self._pump_later(port)

    def _pump_later(self, port: Port) -> None:
        """Make sure delivery to `port` runs when its first waiting bytes are due."""
        if not port.inbound or port.carrier.partitioned:
            return
        at = port.inbound[0][0]
        if port.pump_at is not None and port.pump_at <= at:
            return
        port.pump_at = at
        self.schedule(at, lambda: self._pump(port, at))

    def _pump(self, port: Port, at: float) -> None:
        """Deliver what is due at `port`, in order (each write arrives as one read)."""
        if port.pump_at != at:
            return  # replaced by an earlier delivery
        port.pump_at = None
        carrier = port.carrier
        while port.inbound and not carrier.partitioned and not carrier.down:
            due, data = port.inbound[0]
            if due > self.clock.mono:
                break
            port.inbound.popleft()
            self._deliver(port, data)
        self._pump_later(port)

    def _deliver(self, port: Port, data: bytes | None) -> None:
        node = port.node
        if not port.open:
            return  # this end closed the link: the bytes meet a closed socket
        if not node.alive:
            if data is not None:  # show what a dead node is sent, once decoded
                for frames in reads(port.decoder, data):
                    self.arrived(port, frames, unread=True)
            return
        if data is None:
            port.open = False
            self.note(port.peer.node.name, node.name, "CLOSED", "the far end closed the link")
            node.carrier_lost(port)
        else:
            node.receive(port, data)

    def _carrier(  # noqa: PLR0917
        self, a: Node, b: Node, latency: float, jitter: float, loss: float, rto: float
    ) -> Carrier:
        same = sum(1 for c in self.carriers if c.joins(a, b))
        carrier = Carrier(a, b, latency, jitter, loss, rto, f"#{same + 1}" if same else "")
        self.carriers.append(carrier)
        return carrier

    def _between(self, a: Node, b: Node) -> list[Carrier]:
        found = [c for c in self.carriers if c.joins(a, b)]
        if not found:
            raise ValueError(f"no link between {a.name} and {b.name}")
        return found
