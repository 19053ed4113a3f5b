"""The router's frame switch: admits DIAL and BIND, relays circuit frames, enforces windows.

Rules of this file:
- Every circuit is two `Route`s, one per link, each pointing at the other. A frame arriving
  on (link, circuit) goes to route.peer's link under route.peer's circuit id.
- DATA counts against the sending side's window (`RelayAccount`), CREDIT passing back
  releases it; a side that exceeds its window gets its circuit reset. So the bytes this
  router holds for a circuit never exceed the circuit's windows, and no link is ever paused
  for one slow reader.
- Each circuit opens in one order: DIAL (dialer), ACCEPT (host, once), HANDSHAKE (dialer,
  once, after ACCEPT). A frame out of that order resets the circuit (`protocol_error`): a
  repeated ACCEPT would restart the window accounting, a repeated HANDSHAKE is unaccounted
  bytes the router would have to buffer.
- A circuit ends when both directions carried FIN, or on RESET, or when either link drops;
  the other side is always told why.
- Frames for circuits that no longer exist are dropped and counted (they race with resets).
- All writes produced by one read are coalesced per destination link.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from umbranet.pki import TrustBundle
from umbranet.pki.tickets import Action
from umbranet.proto.flow import MAX_WINDOW, MIN_WINDOW, RelayAccount
from umbranet.router.admission import Admission, admit
from umbranet.router.terminators import Binding, TerminatorTable
from umbranet.wire import (
    PROTOCOL_VERSION,
    ErrorCode,
    Flag,
    Frame,
    FrameType,
    WireError,
    decode_control,
    encode_control,
)
from umbranet.wire.control import encode_error
from umbranet.wire.frames import encode_frame, encode_header

log = logging.getLogger("umbranet.router")

_CREDIT = struct.Struct("!I")
# Plain ints for the per-frame tests: `int & IntFlag` runs Python-level enum code.
_FIN = int(Flag.FIN)
_DATA = int(FrameType.DATA)
_RELAYED = frozenset({_DATA, int(FrameType.CREDIT)})
MAX_CIRCUITS_PER_LINK = 65536


class Route:
    """One side of a relayed circuit."""

    __slots__ = ("account", "circuit", "ended", "link", "opened", "peer", "service")

    def __init__(self, link: PeerLink, circuit: int, service: str = "") -> None:
        self.link = link
        self.circuit = circuit
        self.service = service
        self.peer: Route = self
        self.account = RelayAccount(0)  # DATA from this side toward the peer
        self.ended = False  # this side sent FIN
        self.opened = False  # this side sent its handshake frame (host ACCEPT, dialer HANDSHAKE)

    @property
    def is_host(self) -> bool:
        """The host's side: the router opened it, so its id is even."""
        return self.circuit % 2 == 0


class PeerLink:
    """The router's state for one connected endpoint link."""

    __slots__ = ("hello", "identity", "link", "next_circuit", "outbox", "routes")

    def __init__(self, link: object, identity: str) -> None:
        self.link = link
        self.identity = identity
        self.hello = False
        self.routes: dict[int, Route] = {}
        self.next_circuit = 0  # the router opens even circuit ids on endpoint links
        self.outbox: list[bytes] = []

    def allocate_circuit(self) -> int:
        for _ in range(MAX_CIRCUITS_PER_LINK + 1):
            self.next_circuit = (self.next_circuit + 2) % (1 << 32) or 2
            if self.next_circuit not in self.routes:
                return self.next_circuit
        raise RuntimeError("no free circuit id")


class Forwarder:
    """Frame handling for all links of one router. IO-free except `flush` callbacks."""

    def __init__(
        self,
        bundle: Callable[[], TrustBundle],
        clock: Callable[[], datetime],
        name: str,
    ) -> None:
        self._bundle = bundle
        self._clock = clock
        self._name = name
        self.terminators = TerminatorTable()
        self.counters: Counter[str] = Counter()
        self.circuits = 0
        self.epoch = 0  # the controller's latest revocation epoch; older tickets are stale
        # Tickets this router admitted: (token, identity, service, action) ->
        # (verdict, bundle it was checked against, when). See `_admit`.
        self._admitted: dict[tuple[str, str, str, Action], tuple[Admission, object, float]] = {}

    # -- link events --------------------------------------------------------------------

    def frames(
        self, source: PeerLink, frames: list[Frame], dirty: set[PeerLink]
    ) -> tuple[ErrorCode, str] | None:
        """Handle one read's frames; returns why to close the link (GOAWAY code, reason)."""
        dirty.add(source)
        for frame in frames:
            try:
                if frame.type in _RELAYED and source.hello:
                    self._relay(source, frame, dirty)
                elif not source.hello:
                    self._hello(source, frame)
                elif frame.circuit == 0 and frame.type < FrameType.BIND:
                    closing = self._link_frame(source, frame)
                    if closing:
                        return closing
                elif frame.type == FrameType.DIAL:
                    self._dial(source, frame, dirty)
                elif frame.type == FrameType.ACCEPT:
                    self._accept(source, frame, dirty)
                elif frame.type == FrameType.HANDSHAKE:
                    self._handshake(source, frame, dirty)
                elif frame.type == FrameType.RESET:
                    self._reset_from(source, frame, dirty)
                elif frame.type == FrameType.BIND:
                    self._bind(source, frame)
                elif frame.type == FrameType.UNBIND:
                    self.terminators.remove(source, frame.circuit)
                else:
                    raise WireError(
                        ErrorCode.PROTOCOL_ERROR, f"{FrameType(frame.type).name} from an endpoint"
                    )
            except WireError as exc:
                self._count(exc.code.code, source, exc.reason)
                return exc.code, exc.reason
        return None

    def live_grants(self, links: list[PeerLink]) -> list[tuple[str, str, str, object]]:
        """(identity, service, action, handle) for every circuit end and binding carried."""
        grants: list[tuple[str, str, str, object]] = []
        for link in links:
            for route in link.routes.values():
                action = "bind" if route.circuit % 2 == 0 else "dial"
                grants.append((link.identity, route.service, action, route))
        for binding in self.terminators.all():
            grants.append((binding.identity, binding.service, "bind", binding))
        return grants

    def revoke(self, handle: object, reason: str, dirty: set[PeerLink]) -> None:
        """Close a circuit (both ends told why) or drop a binding (its host told why)."""
        if isinstance(handle, Route):
            if handle.link.routes.get(handle.circuit) is handle:
                self._reset_both(handle, ErrorCode.REVOKED, reason, dirty)
        elif isinstance(handle, Binding):
            link = handle.link
            if self.terminators.remove(link, handle.binding_id) is not None:
                assert isinstance(link, PeerLink)
                self.counters[ErrorCode.REVOKED.code] += 1
                self._send(
                    link,
                    FrameType.BIND_ERR,
                    handle.binding_id,
                    encode_error(ErrorCode.REVOKED, reason),
                )
                dirty.add(link)

    def link_gone(self, source: PeerLink, dirty: set[PeerLink]) -> None:
        """Tell every circuit's other side that this link dropped; forget its bindings."""
        for route in list(source.routes.values()):
            other = route.peer
            self._drop(route)
            code = ErrorCode.HOST_GONE if other.circuit % 2 else ErrorCode.PEER_GONE
            self._send(
                other.link,
                FrameType.RESET,
                other.circuit,
                encode_error(code, "the other end's link to the router dropped"),
            )
            dirty.add(other.link)
        source.routes.clear()
        self.terminators.remove_link(source)

    # -- link-level frames --------------------------------------------------------------

    def _hello(self, source: PeerLink, frame: Frame) -> None:
        if frame.type != FrameType.HELLO or frame.circuit != 0:
            raise WireError(ErrorCode.PROTOCOL_ERROR, "first frame must be HELLO")
        version = decode_control(frame.payload).int_field("v", 0, 65535)
        if version != PROTOCOL_VERSION:
            raise WireError(ErrorCode.UNSUPPORTED_VERSION, f"version {version} not supported")
        source.hello = True
        reply = {"v": PROTOCOL_VERSION, "role": "router", "name": self._name}
        self._send(source, FrameType.HELLO, 0, encode_control(reply))

    def _link_frame(self, source: PeerLink, frame: Frame) -> tuple[ErrorCode, str] | None:
        if frame.type == FrameType.PING:
            if len(frame.payload) > 64:
                raise WireError(ErrorCode.PROTOCOL_ERROR, "PING payload over 64 bytes")
            self._send(source, FrameType.PONG, 0, bytes(frame.payload))
        elif frame.type == FrameType.GOAWAY:
            return ErrorCode.NO_ERROR, "goodbye acknowledged"
        elif frame.type != FrameType.PONG:
            raise WireError(ErrorCode.PROTOCOL_ERROR, f"unexpected {FrameType(frame.type).name}")
        return None

    # -- binding ------------------------------------------------------------------------

    def _bind(self, source: PeerLink, frame: Frame) -> None:
        try:
            ctl = decode_control(frame.payload)
            service = ctl.str_field("service", 256)
            token = ctl.str_field("ticket")
        except WireError as exc:
            self._refuse_bind(source, frame.circuit, exc.code, exc.reason)
            return
        verdict = self._admit(token, source, service, Action.BIND, self._clock())
        if verdict.ticket is None:
            self._refuse_bind(source, frame.circuit, verdict.code, verdict.reason)
            return
        expires = verdict.ticket.expires_at
        self.terminators.add(Binding(source, frame.circuit, service, source.identity, expires))
        self.counters["binds"] += 1
        log.info("bind service=%s identity=%s binding=%d", service, source.identity, frame.circuit)
        self._send(
            source, FrameType.BIND_OK, frame.circuit, encode_control({"expires_at": expires})
        )

    # -- circuits -----------------------------------------------------------------------

    def _dial(self, source: PeerLink, frame: Frame, dirty: set[PeerLink]) -> None:
        circuit = frame.circuit
        if circuit % 2 == 0 or circuit in source.routes:
            raise WireError(ErrorCode.PROTOCOL_ERROR, f"DIAL on bad circuit id {circuit}")
        try:
            ctl = decode_control(frame.payload)
            service = ctl.str_field("service", 256)
            token = ctl.str_field("ticket")
            window = ctl.int_field("window", MIN_WINDOW, MAX_WINDOW)
        except WireError as exc:
            self._refuse(source, circuit, exc.code, exc.reason)
            return
        now = self._clock()
        verdict = self._admit(token, source, service, Action.DIAL, now)
        if verdict.ticket is None:
            self._refuse(source, circuit, verdict.code, verdict.reason)
            return
        if len(source.routes) >= MAX_CIRCUITS_PER_LINK:
            self._refuse(source, circuit, ErrorCode.TOO_MANY_CIRCUITS, "link has too many circuits")
            return
        binding = self.terminators.pick(service, int(now.timestamp()))
        if binding is None:
            self._refuse(
                source,
                circuit,
                ErrorCode.NO_TERMINATOR,
                f"service {service!r} has no host at this router",
            )
            return
        host = binding.link
        assert isinstance(host, PeerLink)
        if len(host.routes) >= MAX_CIRCUITS_PER_LINK:
            self._refuse(source, circuit, ErrorCode.TOO_MANY_CIRCUITS, "host has too many circuits")
            return
        dialer_side = Route(source, circuit, service)
        host_side = Route(host, host.allocate_circuit(), service)
        dialer_side.peer, host_side.peer = host_side, dialer_side
        host_side.account = RelayAccount(window)  # host -> dialer, bounded by the dialer
        source.routes[circuit] = dialer_side
        host.routes[host_side.circuit] = host_side
        self.circuits += 1
        self.counters["dials"] += 1
        fields = {
            "service": service,
            "binding": binding.binding_id,
            "ticket": token,
            "dialer": source.identity,
            "window": window,
        }
        self._send(host, FrameType.CONNECT, host_side.circuit, encode_control(fields, ctl.blob))
        dirty.add(host)
        log.debug(
            "circuit open service=%s dialer=%s host=%s", service, source.identity, host.identity
        )

    def _accept(self, source: PeerLink, frame: Frame, dirty: set[PeerLink]) -> None:
        route = source.routes.get(frame.circuit)
        if route is None:
            self.counters["frames_unknown_circuit"] += 1
            return
        if not route.is_host or route.opened:
            self._reset_both(route, ErrorCode.PROTOCOL_ERROR, "ACCEPT out of order", dirty)
            return
        try:
            window = decode_control(frame.payload).int_field("window", MIN_WINDOW, MAX_WINDOW)
        except WireError as exc:
            self._reset_both(route, exc.code, exc.reason, dirty)
            return
        route.opened = True
        route.peer.account = RelayAccount(window)  # dialer -> host, bounded by the host
        self._forward(route, frame, dirty)

    def _handshake(self, source: PeerLink, frame: Frame, dirty: set[PeerLink]) -> None:
        route = source.routes.get(frame.circuit)
        if route is None:
            self.counters["frames_unknown_circuit"] += 1
            return
        if route.is_host or route.opened or not route.peer.opened:
            self._reset_both(route, ErrorCode.PROTOCOL_ERROR, "HANDSHAKE out of order", dirty)
            return
        route.opened = True
        self._forward(route, frame, dirty)

    def _relay(self, source: PeerLink, frame: Frame, dirty: set[PeerLink]) -> None:
        route = source.routes.get(frame.circuit)
        if route is None:
            self.counters["frames_unknown_circuit"] += 1
            return
        if frame.type == _DATA:
            if route.ended or not route.account.forward(len(frame.payload)):
                self._reset_both(
                    route,
                    ErrorCode.FLOW_CONTROL_ERROR,
                    "DATA beyond the receiver's window or after FIN",
                    dirty,
                )
                return
            self._forward(route, frame, dirty)
            if frame.flags & _FIN:
                route.ended = True
                if route.peer.ended:
                    self._drop(route)
        else:  # CREDIT: `frames` sends only DATA and CREDIT here
            payload = frame.payload
            if len(payload) != 4 or not route.peer.account.credit(_CREDIT.unpack(payload)[0]):
                self._reset_both(route, ErrorCode.FLOW_CONTROL_ERROR, "bad CREDIT", dirty)
                return
            self._forward(route, frame, dirty)

    def _reset_from(self, source: PeerLink, frame: Frame, dirty: set[PeerLink]) -> None:
        route = source.routes.get(frame.circuit)
        if route is None:
            return
        self._forward(route, frame, dirty)
        self._drop(route)

    # -- helpers ------------------------------------------------------------------------

    def _admit(
        self, token: str, source: PeerLink, service: str, action: Action, now: datetime
    ) -> Admission:
        """`admit`, remembering tickets it allowed (an application dials with one cached
        ticket for minutes; the check costs ~20 us of every DIAL).

        A remembered verdict is reused only for the same token, identity, service and
        action, against the same bundle object, while the ticket has not expired, the clock
        has not gone back, and no newer revocation epoch was adopted; otherwise `admit`
        decides again. Refusals are never remembered.
        """
        bundle = self._bundle()
        now_ts = now.timestamp()
        key = (token, source.identity, service, action)
        hit = self._admitted.get(key)
        if hit is not None:
            verdict, checked_bundle, checked_at = hit
            ticket = verdict.ticket
            if (
                ticket is not None
                and checked_bundle is bundle
                and checked_at <= now_ts < ticket.expires_at
                and ticket.epoch >= self.epoch
            ):
                return verdict
        verdict = admit(
            token,
            peer_id=source.identity,
            service=service,
            action=action,
            bundle=bundle,
            now=now,
            min_epoch=self.epoch,
        )
        if verdict.ticket is not None:
            if len(self._admitted) >= 4096:
                self._admitted.clear()
            self._admitted[key] = (verdict, bundle, now_ts)
        return verdict

    def _forward(self, route: Route, frame: Frame, dirty: set[PeerLink]) -> None:
        other = route.peer
        out = other.link.outbox
        out.append(encode_header(frame.type, other.circuit, len(frame.payload), frame.flags))
        out.append(frame.payload)  # type: ignore[arg-type]  # joined (copied) before the read ends
        dirty.add(other.link)

    def _reset_both(self, route: Route, code: ErrorCode, reason: str, dirty: set[PeerLink]) -> None:
        self._count(code.code, route.link, reason)
        payload = encode_error(code, reason)
        for side in (route, route.peer):
            self._send(side.link, FrameType.RESET, side.circuit, payload)
            dirty.add(side.link)
        self._drop(route)

    def _refuse(self, source: PeerLink, circuit: int, code: ErrorCode, reason: str) -> None:
        self._count(code.code, source, reason)
        self._send(source, FrameType.RESET, circuit, encode_error(code, reason))

    def _refuse_bind(self, source: PeerLink, binding: int, code: ErrorCode, reason: str) -> None:
        self._count(code.code, source, reason)
        self._send(source, FrameType.BIND_ERR, binding, encode_error(code, reason))

    def _drop(self, route: Route) -> None:
        if route.link.routes.pop(route.circuit, None) is not None:
            self.circuits -= 1
        route.peer.link.routes.pop(route.peer.circuit, None)

    def _send(self, target: PeerLink, ftype: FrameType, circuit: int, payload: bytes) -> None:
        target.outbox.append(encode_frame(ftype, circuit, payload))

    def _count(self, code: str, source: PeerLink, reason: str) -> None:
        self.counters[code] += 1
        log.warning("refused code=%s identity=%s reason=%s", code, source.identity, reason)
