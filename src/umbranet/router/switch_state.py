"""What the router's switch holds and the small steps every frame handler takes with it.

`SwitchState` is the ground floor of `Switch` (see `router/switch.py` for the rules): the
route table, the links, the handshake deadlines and pending counts, the budgets' running
totals, the ticket gate and the relay, and the helpers that queue a frame for a link, reset
or drop a circuit's two routes and count a refusal. Circuit opening (`router/opening.py`) and
the per-read frame loop (`router/switch.py`) are built on top of it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from umbranet.pki import TrustBundle
from umbranet.router.gate import TicketGate
from umbranet.router.links import Route, Side, SwitchLink
from umbranet.router.quotas import SwitchLimits
from umbranet.router.redial import PendingConnects
from umbranet.router.relay import WgRelay
from umbranet.router.routes import RouteTable
from umbranet.router.terminators import TerminatorTable
from umbranet.wire import ErrorCode, Frame, FrameType
from umbranet.wire.control import encode_error
from umbranet.wire.frames import HEADER as _HEADER
from umbranet.wire.frames import encode_frame

__all__ = ["SwitchState"]

log = logging.getLogger("umbranet.router")


class SwitchState:
    """The switch's tables and shared steps; `Switch` is the class to use."""

    def __init__(
        self,
        bundle: Callable[[], TrustBundle],
        name: str,
        limits: SwitchLimits | None = None,
    ) -> None:
        self._bundle = bundle
        self._name = name
        self.limits = limits or SwitchLimits()
        self.routes = RouteTable()
        self.counters: Counter[str] = Counter()
        self.circuits = 0
        self.in_flight = 0  # relayed DATA bytes not yet credited back, router-wide
        self.frames_out = 0  # frames relayed or sent by the switch
        self._pending: dict[Route, float] = {}  # dialer-side routes -> handshake deadline
        self._pending_by_identity: Counter[str] = Counter()
        self._connects = PendingConnects()  # CONNECTs a host may refuse: retried elsewhere
        self._dirty: set[SwitchLink] = set()
        self.links: set[SwitchLink] = set()
        self._shed_links: list[SwitchLink] = []
        self.quiet = False  # see `frames`
        # A no-transit router is only ever a first or last hop (the operator's setting, or
        # the controller's): it refuses to pass on a dial from a router to a router, whatever
        # route asks for it, so a stale or forged route cannot make it carry transit.
        self.no_transit = False
        self.gate = TicketGate(bundle, self.limits, self.counters)
        self.relay = WgRelay(self.gate, self.counters, self._dirty, self._count)

    @property
    def epoch(self) -> int:
        """The controller's latest revocation epoch; tickets from older ones are stale."""
        return self.gate.epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.gate.epoch = epoch

    @property
    def pending_handshakes(self) -> int:
        return len(self._pending)

    @property
    def terminators(self) -> TerminatorTable:
        return self.routes.terminators

    # -- helpers ------------------------------------------------------------------------

    def _unpend(self, route: Route) -> None:
        if self._pending.pop(route, None) is not None:
            left = self._pending_by_identity[route.dialer] - 1
            if left > 0:
                self._pending_by_identity[route.dialer] = left
            else:
                del self._pending_by_identity[route.dialer]

    def _forward(self, route: Route, frame: Frame) -> None:
        other = route.peer
        out = other.link.outbox
        out.append(_HEADER.pack(frame.type, frame.flags, 0, other.circuit, len(frame.payload)))
        out.append(frame.payload)  # type: ignore[arg-type]  # joined (copied) before the read ends
        self._dirty.add(other.link)
        self.frames_out += 1

    def _reset_both(self, route: Route, code: ErrorCode, reason: str) -> None:
        self._count(code.code, route.link, reason)
        payload = encode_error(code, reason)
        for side in (route, route.peer):
            self._send(side.link, FrameType.RESET, side.circuit, payload)
        self._drop(route)

    def _refuse(self, source: SwitchLink, circuit: int, code: ErrorCode, reason: str) -> None:
        self._count(code.code, source, reason)
        self._send(source, FrameType.RESET, circuit, encode_error(code, reason))

    def _refuse_bind(self, source: SwitchLink, binding: int, code: ErrorCode, reason: str) -> None:
        self._count(code.code, source, reason)
        self._send(source, FrameType.BIND_ERR, binding, encode_error(code, reason))

    def _drop(self, route: Route) -> None:
        for side in (route, route.peer):
            if side.link.routes.pop(side.circuit, None) is not None and side is route:
                self.circuits -= 1
            # What this side sent and was never credited is no longer owed to the other link.
            owed = side.account.in_flight
            if owed:
                side.peer.link.in_flight -= owed
                self.in_flight -= owed
                side.account.in_flight = 0
            if side.side is Side.DIALER:
                self._unpend(side)
            else:
                self._connects.pop(side)

    def _send(self, target: SwitchLink, ftype: FrameType, circuit: int, payload: bytes) -> None:
        target.outbox.append(encode_frame(ftype, circuit, payload))
        self._dirty.add(target)
        self.frames_out += 1

    def _count(self, code: str, source: SwitchLink, reason: str) -> None:
        count = self.counters[code] = self.counters[code] + 1
        # Every refusal is counted; the first hundred of a code are logged, then every
        # hundredth, so a flood of bad frames cannot turn into a flood of log lines.
        if count <= 100 or count % 100 == 0:
            log.warning(
                "refused code=%s identity=%s reason=%r count=%d",
                code,
                source.identity,
                reason,
                count,
            )
