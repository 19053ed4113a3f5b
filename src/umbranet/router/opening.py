"""Opening circuits and bindings at the router's switch: DIAL, BIND, ACCEPT, HANDSHAKE.

A DIAL is admitted (the ticket checked on an endpoint link, again at the last router before a
host), given its next hop from the route table, and becomes two `Route`s; a CONNECT (or a DIAL
to the next router) goes on with the dial's fields and its opaque blob. ACCEPT comes once from
the host's side, HANDSHAKE once from the dialer's side after it; anything out of that order
resets the circuit. A dial refused before it was accepted goes to another host or route
(`redial.py`), so the dialer sees nothing of it. The rules of the whole switch are in
`router/switch.py`."""

from __future__ import annotations

import logging
from collections.abc import Hashable

from umbranet.clock import Instant
from umbranet.pki.tickets import Action
from umbranet.proto.flow import MAX_WINDOW, MIN_WINDOW, RelayAccount
from umbranet.router.links import LinkKind, Route, Side, SwitchLink
from umbranet.router.redial import Connecting, about_the_way, redial
from umbranet.router.routes import Local, Refuse, Via
from umbranet.router.switch_state import SwitchState
from umbranet.router.terminators import Binding
from umbranet.wire import ErrorCode, Frame, FrameType, WireError, decode_control
from umbranet.wire.control import encode_control, encode_error
from umbranet.wire.frames import MAX_INSTANCE

__all__ = ["CircuitOpening"]

log = logging.getLogger("umbranet.router")


class CircuitOpening(SwitchState):
    """The switch's admission half: see the module docstring."""

    # -- binding ------------------------------------------------------------------------

    def _bind(self, source: SwitchLink, frame: Frame, now: Instant) -> None:
        try:
            ctl = decode_control(frame.payload)
            service = ctl.str_field("service", 256)
            token = ctl.str_field("ticket")
            # Optional: a host's share of dials (weighted) and its standby rank (precedence).
            weight = ctl.int_field("weight", 0, 1000) if "weight" in ctl.fields else 1
            rank = ctl.int_field("precedence", 0, 9) if "precedence" in ctl.fields else 0
            # Optional: the host process, named by in-session opens (`terminators`, rule 3).
            instance = ctl.str_field("instance", MAX_INSTANCE) if "instance" in ctl.fields else ""
        except WireError as exc:
            self._refuse_bind(source, frame.circuit, exc.code, exc.reason)
            return
        verdict = self.gate.check_on(
            token, source, subject=source.identity, service=service, action=Action.BIND, now=now
        )
        if verdict.ticket is None:
            self._refuse_bind(source, frame.circuit, verdict.code, verdict.reason)
            return
        expires = verdict.ticket.expires_at
        binding = Binding(
            source,
            frame.circuit,
            service,
            source.identity,
            expires,
            weight,
            rank,
            instance=instance,
        )
        self.terminators.add(binding)
        self.counters["binds"] += 1
        log.info("bind service=%r identity=%s binding=%d", service, source.identity, frame.circuit)
        self._send(
            source, FrameType.BIND_OK, frame.circuit, encode_control({"expires_at": expires})
        )

    # -- circuits -----------------------------------------------------------------------

    def _dial(self, source: SwitchLink, frame: Frame, now: Instant) -> None:
        circuit = frame.circuit
        if not source.session.is_peer_id(circuit) or circuit in source.routes:
            raise WireError(ErrorCode.PROTOCOL_ERROR, f"DIAL on bad circuit id {circuit}")
        try:
            ctl = decode_control(frame.payload)
            service = ctl.str_field("service", 256)
            token = ctl.str_field("ticket")
            window = ctl.int_field("window", MIN_WINDOW, MAX_WINDOW)
            from_router = source.kind is LinkKind.ROUTER
            dialer = ctl.str_field("dialer", 2048) if from_router else source.identity
            # An open inside a session names the host that holds it (see `terminators`).
            host = ctl.str_field("host", 2048) if "host" in ctl.fields else ""
            instance = ctl.str_field("instance", MAX_INSTANCE) if "instance" in ctl.fields else ""
        except WireError as exc:
            self._refuse(source, circuit, exc.code, exc.reason)
            return
        expires_at = 0
        if not from_router:
            verdict = self.gate.check_on(
                token, source, subject=dialer, service=service, action=Action.DIAL, now=now
            )
            if verdict.ticket is None:
                self._refuse(source, circuit, verdict.code, verdict.reason)
                return
            expires_at = verdict.ticket.expires_at
        pending = self._pending_by_identity[dialer]
        refusal = self.limits.circuit_refusal(len(source.routes), pending, window)
        if refusal is not None:
            self._refuse(source, circuit, *refusal)
            return
        hop = self.routes.next_hop(
            service, int(now.unix), dialer=dialer, host=host, instance=instance
        )
        if isinstance(hop, Via) and from_router and self.no_transit:
            hop = Refuse(ErrorCode.TRANSIT_REFUSED, "this router carries no transit")
        if isinstance(hop, Refuse):
            self._refuse(source, circuit, hop.code, hop.reason)
            return
        if isinstance(hop, Local):
            target = hop.binding.link
            if from_router:  # the last router checks the ticket again before a host sees it
                verdict = self.gate.check_on(
                    token, source, subject=dialer, service=service, action=Action.DIAL, now=now
                )
                if verdict.ticket is None:
                    self._refuse(source, circuit, verdict.code, verdict.reason)
                    return
        else:
            target = hop.link
        assert isinstance(target, SwitchLink)
        if len(target.routes) >= self.limits.max_circuits_per_link:
            self._refuse(source, circuit, ErrorCode.TOO_MANY_CIRCUITS, "host has too many circuits")
            return
        dialer_side = Route(source, circuit, service, Side.DIALER)
        host_side = Route(target, target.session.next_id(target.routes), service, Side.HOST)
        dialer_side.peer, host_side.peer = host_side, dialer_side
        dialer_side.dialer = host_side.dialer = dialer
        dialer_side.expires_at = expires_at
        host_side.account = RelayAccount(window)  # host -> dialer, bounded by the dialer
        source.routes[circuit] = dialer_side
        target.routes[host_side.circuit] = host_side
        self._pending[dialer_side] = now.later(self.limits.handshake_timeout)
        self._pending_by_identity[dialer] += 1
        self.circuits += 1
        self.counters["dials"] += 1
        fields = {"service": service, "ticket": token, "dialer": dialer, "window": window}
        if host:
            fields["host"] = host
        if instance:
            fields["instance"] = instance
        if isinstance(hop, Local):
            fields["binding"] = hop.binding.binding_id
            tried: list[tuple[Hashable, int]] = [(target, hop.binding.binding_id)]
            self._connects.put(host_side, Connecting(dict(fields), bytes(ctl.blob), tried))
            self._send(
                target, FrameType.CONNECT, host_side.circuit, encode_control(fields, ctl.blob)
            )
        else:
            record = Connecting(dict(fields), bytes(ctl.blob), [(target, 0)], local=False)
            record.standby_here = not from_router and self.routes.standby(service)
            self._connects.put(host_side, record)
            self._send(target, FrameType.DIAL, host_side.circuit, encode_control(fields, ctl.blob))
        log.debug("circuit open service=%r dialer=%s via=%s", service, dialer, target.identity)

    def _accept(self, source: SwitchLink, frame: Frame) -> None:
        route = source.routes.get(frame.circuit)
        if route is None:
            self.counters["frames_unknown_circuit"] += 1
            return
        if route.side is not Side.HOST or route.opened:
            self._reset_both(route, ErrorCode.PROTOCOL_ERROR, "ACCEPT out of order")
            return
        try:
            window = decode_control(frame.payload).int_field("window", MIN_WINDOW, MAX_WINDOW)
        except WireError as exc:
            self._reset_both(route, exc.code, exc.reason)
            return
        if window > self.limits.max_window:
            reason = f"window over this router's {self.limits.max_window}"
            self._reset_both(route, ErrorCode.QUOTA_EXCEEDED, reason)
            return
        route.opened = True
        connecting = self._connects.pop(route)
        if connecting is not None and connecting.local:
            binding = self.terminators.find(route.link, connecting.binding)
            if binding is not None:
                self.terminators.succeeded(binding)
        route.peer.account = RelayAccount(window)  # dialer -> host, bounded by the host
        self._forward(route, frame)

    def _handshake(self, source: SwitchLink, frame: Frame) -> None:
        route = source.routes.get(frame.circuit)
        if route is None:
            self.counters["frames_unknown_circuit"] += 1
            return
        if route.side is not Side.DIALER or route.opened or not route.peer.opened:
            self._reset_both(route, ErrorCode.PROTOCOL_ERROR, "HANDSHAKE out of order")
            return
        route.opened = True
        self._unpend(route)
        self._forward(route, frame)

    def _redial(
        self, route: Route, connecting: Connecting, why: Frame | ErrorCode, now: int
    ) -> bool:
        """Send a dial refused before it was accepted elsewhere, if it may (`redial.py`)."""
        limit = self.limits.max_circuits_per_link
        ftype = redial(route, connecting, why, self.routes, limit, now=now)
        if ftype is None:
            if connecting.local and connecting.fields.get("instance") and about_the_way(why):
                self._instance_failed(route)
                return True
            return False
        self._connects.put(route, connecting)
        self.counters["dial_retried"] += 1
        log.info("dial retried service=%r identity=%s", route.service, route.link.identity)
        self._send(
            route.link, ftype, route.circuit, encode_control(connecting.fields, connecting.blob)
        )
        return True

    def _instance_failed(self, route: Route) -> None:
        """The host process an in-session open named failed it before accepting, and no
        other binding of that process is here: the dialer reads `instance_gone` (its SDK
        then dials afresh), not a code about the way that would send it elsewhere."""
        reason = "the session's host process failed the open before accepting it"
        self._count(ErrorCode.INSTANCE_GONE.code, route.peer.link, reason)
        dialer = route.peer
        self._drop(route)
        payload = encode_error(ErrorCode.INSTANCE_GONE, reason)
        self._send(dialer.link, FrameType.RESET, dialer.circuit, payload)
