"""The router's switch, sans-IO: admits DIAL and BIND, routes and relays circuits, enforces
windows, deadlines and quotas, for links to endpoints and to other routers alike.

Rules of this file:
- Every link is a `SwitchLink`: its `LinkSession` (HELLO, keepalive, GOAWAY, id spaces) and
  its routes. Its kind (endpoint or router) comes from the HELLO role, which the session
  checked against the peer's certificate.
- Every circuit is two `Route`s, one per link, each pointing at the other. A frame arriving
  on (link, circuit) goes to route.peer's link under route.peer's circuit id. Each route
  stores its side: whether its link leads towards the dialer or towards the host. Nothing
  is inferred from circuit-id parity (on a router-to-router link both parities occur).
- Tickets are checked only on endpoint links (the peer is the ticket's subject); a dial that
  arrives from a router is re-checked at the last router before it reaches a host. Router
  links are trusted to relay, not to grant.
- Each circuit opens in one order: DIAL (towards the host), ACCEPT (from the host's side,
  once), HANDSHAKE (from the dialer's side, once, after ACCEPT), within
  `handshake_timeout`; a frame out of that order resets the circuit (`protocol_error`).
- DATA counts against the sending side's window (`RelayAccount`), CREDIT passing back
  releases it; a side that exceeds its window gets its circuit reset. Windows are budgeted
  per destination link, per identity and router-wide (see `quotas.py`), so the bytes this
  router can be made to hold are bounded, and no link is ever paused for one slow reader.
- A circuit ends on FIN both ways, RESET, or either link dropping; the other side is told
  why. Frames for circuits gone already are dropped and counted (they race with resets).
- `poll_transmit()` hands over every link outbox written since the last call (so the
  writes of one read are coalesced per link). After a read that only relayed DATA and
  CREDIT (`quiet`), `poll_relayed()` does the same without the announcement, shed and
  deadline polls the shell otherwise runs (nothing of theirs can have changed)."""

from __future__ import annotations

import logging
import struct
from collections.abc import Hashable

from umbranet.clock import Deadline, Instant
from umbranet.proto.link import Closing, LinkSession, LinkState, PeerSilent, Role
from umbranet.router.grants import Grant, expired_grants, live_grants
from umbranet.router.links import LinkKind, Route, Side, SwitchLink
from umbranet.router.opening import CircuitOpening
from umbranet.router.terminators import Binding
from umbranet.wire import ErrorCode, Flag, Frame, FrameType, WireError
from umbranet.wire.control import encode_error
from umbranet.wire.frames import HEADER as _HEADER

__all__ = ["Switch"]

log = logging.getLogger("umbranet.router")

_CREDIT = struct.Struct("!I")
# Plain ints for the per-frame tests: `int & IntFlag` runs Python-level enum code.
_FIN = int(Flag.FIN)
_DATA = int(FrameType.DATA)
_RELAYED = frozenset({_DATA, int(FrameType.CREDIT)})
_LINK_FRAME_MAX = int(FrameType.BIND)  # HELLO, PING, PONG, GOAWAY sort below BIND
_KEEPALIVE = frozenset({int(FrameType.PING), int(FrameType.PONG)})
_WG_DATAGRAM = int(FrameType.WG_DATAGRAM)
# An enum member as a module constant: the interpreter specialises a global lookup, not
# an attribute of a class (read for every read of a link).
_READY = LinkState.READY


class Switch(CircuitOpening):
    """Frame handling for all links of one router. See the module docstring; admission is
    in `router/opening.py`, the tables and shared steps in `router/switch_state.py`."""

    # -- links --------------------------------------------------------------------------

    def add_link(
        self,
        handle: Hashable,
        identity: str,
        peer_kind: str,
        now: Instant,
        *,
        opener: bool = False,
        peer_key: str | None = None,
        noise_key: bytes | None = None,
    ) -> SwitchLink:
        """A link whose TLS handshake passed; HELLO comes first. `opener`: this router
        connected (to a neighbouring router), so it speaks first and opens odd ids.
        `noise_key`: the X25519 key its SVID binds, what relayed WireGuard datagrams name."""
        session = LinkSession(
            Role.ROUTER,
            opener=opener,
            name=self._name,
            peer_kind=peer_kind,
            now=now,
            timers=self.limits.timers,
        )
        link = SwitchLink(handle, identity, session, self.limits)
        link.peer_key = peer_key
        self.links.add(link)
        if peer_kind != "router":
            self.relay.register(link, noise_key)
        else:
            self.relay.add_router(link)
        return link

    def frames(
        self, source: SwitchLink, frames: list[Frame], now: Instant
    ) -> tuple[ErrorCode, str] | None:
        """Handle one read's frames; returns why to close the link (its GOAWAY is queued)."""
        session = source.session
        session.last_heard = now.mono  # `heard(now)`, inline: once per read
        # Stays True while the read only relays DATA and CREDIT: no deadline, shed link or
        # announcement can change then, so the shell only writes (`poll_relayed`).
        self.quiet = True
        ready = session.state is _READY
        for frame in frames:
            ftype = frame.type
            try:
                if ftype in _RELAYED and ready:
                    self._relay(source, frame)
                    continue
                self.quiet = False
                self._dirty.add(source)  # a PONG or a refusal may be queued for it
                if ftype == _WG_DATAGRAM and session.ready:  # from a router: across the mesh
                    self.relay.handle_datagram(source, frame, now)
                    continue
                # Keepalives are cheap and answered under the link's output throttle; every
                # other control frame costs parsing (or a ticket check) and is budgeted.
                if ftype not in _KEEPALIVE and not source.control_bucket.take(now.mono):
                    raise WireError(ErrorCode.RATE_LIMITED, "too many control frames")
                if not session.ready or (frame.circuit == 0 and ftype < _LINK_FRAME_MAX):
                    session.handle_link_frame(frame, now)
                    ready = session.state is _READY
                    if self._session_closed(source):
                        return ErrorCode.NO_ERROR, "goodbye acknowledged"
                elif ftype == FrameType.DIAL:
                    self._dial(source, frame, now)
                elif ftype == FrameType.ACCEPT:
                    self._accept(source, frame)
                elif ftype == FrameType.HANDSHAKE:
                    self._handshake(source, frame)
                elif ftype == FrameType.RESET:
                    self._reset_from(source, frame, now)
                elif ftype == FrameType.BIND and source.kind is LinkKind.ENDPOINT:
                    self._bind(source, frame, now)
                elif ftype == FrameType.UNBIND and source.kind is LinkKind.ENDPOINT:
                    self.terminators.remove(source, frame.circuit)
                elif ftype == FrameType.WG_RELAY_ALLOW:
                    self.relay.handle_allow(source, frame, now)
                elif ftype == FrameType.WG_RELAY_ERR and source.kind is LinkKind.ROUTER:
                    self.relay.handle_error(source, frame)
                else:
                    raise WireError(
                        ErrorCode.PROTOCOL_ERROR, f"{FrameType(ftype).name} from a {source.kind}"
                    )
            except WireError as exc:
                self._count(exc.code.code, source, exc.reason)
                session.close(exc.code, exc.reason)
                session.poll_event()
                return exc.code, exc.reason
        return None

    def link_timeout(self, source: SwitchLink, now: Instant) -> tuple[ErrorCode, str] | None:
        """Run the link's timers (HELLO deadline, keepalive); returns why to close it."""
        session = source.session
        session.handle_timeout(now)
        self._dirty.add(source)
        while (event := session.poll_event()) is not None:
            if isinstance(event, PeerSilent):
                self.counters["peer_silent"] += 1
                log.warning("link silent identity=%s for=%.1fs", source.identity, event.silent_for)
                return ErrorCode.PEER_GONE, "peer silent"
            if isinstance(event, Closing):
                self._count("hello_timeout", source, event.reason)
                return event.code, event.reason
        return None

    def link_gone(self, source: SwitchLink) -> None:
        """Tell every circuit's other side that this link dropped; forget its bindings. A
        dial not yet accepted through it goes to another host or route instead."""
        self.routes.link_gone(source)  # first: a dial sent again must not pick this link
        for route in list(source.routes.values()):
            # The host's own link is gone: host_gone. A lost hop (a router link) leaves the
            # host alive behind it, so the circuit's other end reads peer_gone.
            host_left = route.side is Side.HOST and source.kind is LinkKind.ENDPOINT
            code = ErrorCode.HOST_GONE if host_left else ErrorCode.PEER_GONE
            connecting = self._connects.pop(route)
            if connecting is not None and self._redial(route, connecting, code, 0):
                continue
            other = route.peer
            self._drop(route)
            self._send(
                other.link,
                FrameType.RESET,
                other.circuit,
                encode_error(code, "the other end's link to the router dropped"),
            )
        source.routes.clear()
        self.relay.link_gone(source)
        self._dirty.discard(source)
        self.links.discard(source)

    def poll_transmit(self) -> list[tuple[SwitchLink, list[bytes]]]:
        """(link, buffers) for every link written to since the last call."""
        self.relay.poll_announce()
        if not self._dirty:
            return []
        out = [(link, link.session.poll_transmit()) for link in self._dirty if link.outbox]
        self._dirty.clear()
        return out

    def poll_relayed(self) -> list[tuple[SwitchLink, list[bytes]]]:
        """`poll_transmit` after a quiet read (`quiet`): only relayed frames can be queued,
        so no announcement is due."""
        dirty = self._dirty
        if not dirty:
            return []
        out = []
        for link in dirty:
            outbox = link.outbox
            if outbox:
                out.append((link, outbox[:]))
                del outbox[:]
        dirty.clear()
        return out

    def poll_shed(self) -> list[SwitchLink]:
        """Links the switch gave up (their GOAWAY is queued): the shell closes them."""
        shed, self._shed_links = self._shed_links, []
        return shed

    # -- deadlines ----------------------------------------------------------------------

    def handle_timeout(self, now: Instant) -> None:
        """Reset circuits whose handshake did not finish in time."""
        mono = now.mono
        for route, deadline in list(self._pending.items()):
            if deadline > mono:
                break  # insertion order is deadline order: one timeout for every circuit
            if route.link.routes.get(route.circuit) is route:
                self._reset_both(
                    route, ErrorCode.HANDSHAKE_TIMEOUT, "the circuit's handshake took too long"
                )
            else:
                self._unpend(route)

    def poll_timeout(self) -> Deadline | None:
        for deadline in self._pending.values():
            return Deadline(deadline, "handshake")
        return None

    # -- the controller's decisions -----------------------------------------------------

    def live_grants(self, links: list[SwitchLink]) -> list[Grant]:
        """Every circuit end and binding an endpoint holds here by a ticket (`grants.py`)."""
        return live_grants(links, self.terminators)

    def expired_grants(self, now: int) -> list[Grant]:
        """Dial grants whose ticket expired by `now` (unix seconds) (`grants.py`)."""
        return expired_grants(self.links, now)

    def revoke(self, handle: object, reason: str, code: ErrorCode = ErrorCode.REVOKED) -> None:
        """Close a circuit (both ends told why) or drop a binding (its host told why)."""
        if isinstance(handle, Route):
            if handle.link.routes.get(handle.circuit) is handle:
                self._reset_both(handle, code, reason)
        elif isinstance(handle, Binding):
            link = handle.link
            if self.terminators.remove(link, handle.binding_id) is not None:
                assert isinstance(link, SwitchLink)
                self.counters[code.code] += 1
                self._send(link, FrameType.BIND_ERR, handle.binding_id, encode_error(code, reason))

    def _over_budget(self, dest: SwitchLink) -> None:
        """DATA towards `dest` took it (or the router) over its in-flight budget: the circuit
        holding the most there is reset, or, router-wide, the link holding the most is shed.
        Every byte counted here was promised by a window, so only readers that stop reading
        while many circuits push at them ever get here."""
        self.quiet = False
        if dest.in_flight > self.limits.link_budget(len(dest.routes)) and dest.routes:
            heaviest = max(dest.routes.values(), key=lambda r: r.peer.account.in_flight)
            self._reset_both(
                heaviest, ErrorCode.QUOTA_EXCEEDED, "the link's buffer budget is spent"
            )
        if self.in_flight > self.limits.total_budget(self.circuits):
            biggest = max(self.links, key=lambda link: link.in_flight)
            self.counters[ErrorCode.OVERLOADED.code] += 1
            log.warning(
                "shedding link identity=%s in_flight=%d", biggest.identity, biggest.in_flight
            )
            biggest.session.close(ErrorCode.OVERLOADED, "the router is over its memory budget")
            out = biggest.session.poll_transmit()
            self.link_gone(biggest)
            biggest.outbox.extend(out)  # the GOAWAY still leaves
            self._dirty.add(biggest)
            self._shed_links.append(biggest)

    def _relay(self, source: SwitchLink, frame: Frame) -> None:
        route = source.routes.get(frame.circuit)
        if route is None:
            self.counters["frames_unknown_circuit"] += 1
            return
        if frame.type == _DATA:
            size = len(frame.payload)
            if route.ended or not route.account.forward(size):
                self._reset_both(
                    route,
                    ErrorCode.FLOW_CONTROL_ERROR,
                    "DATA beyond the receiver's window or after FIN",
                )
                return
            other = route.peer
            dest = other.link
            dest.in_flight += size
            self.in_flight += size
            # `_forward`, inline: this runs per frame.
            out = dest.outbox
            out.append(_HEADER.pack(_DATA, frame.flags, 0, other.circuit, size))
            out.append(frame.payload)  # type: ignore[arg-type]  # joined before the read ends
            self._dirty.add(dest)
            self.frames_out += 1
            # `SwitchLimits.link_budget` and `total_budget`, inline: this runs per frame.
            limits = self.limits
            per_circuit = limits.in_flight_per_circuit
            if (
                # The first test spares the len() below while the link is under its floor.
                dest.in_flight > limits.in_flight_per_link
                and dest.in_flight > limits.in_flight_per_link + len(dest.routes) * per_circuit
            ) or self.in_flight > limits.in_flight_total + self.circuits * per_circuit:
                self._over_budget(dest)
                return
            if frame.flags & _FIN:
                route.ended = True
                if route.peer.ended:
                    self._drop(route)
        else:  # CREDIT: `frames` sends only DATA and CREDIT here
            payload = frame.payload
            credit = _CREDIT.unpack(payload)[0] if len(payload) == 4 else 0
            if not route.peer.account.credit(credit):
                self._reset_both(route, ErrorCode.FLOW_CONTROL_ERROR, "bad CREDIT")
                return
            source.in_flight -= credit
            self.in_flight -= credit
            self._forward(route, frame)

    def _reset_from(self, source: SwitchLink, frame: Frame, now: Instant) -> None:
        route = source.routes.get(frame.circuit)
        if route is None:
            return
        connecting = self._connects.pop(route)
        if connecting is not None and self._redial(route, connecting, frame, int(now.unix)):
            return  # another host of the service has the dial; the dialer saw nothing
        self._forward(route, frame)
        self._drop(route)

    # -- helpers ------------------------------------------------------------------------

    def _session_closed(self, source: SwitchLink) -> bool:
        """The peer said GOAWAY."""
        event = source.session.poll_event()
        while event is not None and not isinstance(event, Closing):
            event = source.session.poll_event()
        return event is not None
