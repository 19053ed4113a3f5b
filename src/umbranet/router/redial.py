"""Dials this router sent on that have not been accepted yet: what it needs to send the same
dial elsewhere when the next hop refuses it.

A host can fail a dial before accepting (it is shutting down, over its backlog, it lost its
binding, its process hangs and resets), and a neighbouring router can fail it (its own
route died with a link a moment ago and the controller's new routes are not there yet):
the dialer should not see that while another host or another loop-free route is there.
The switch keeps the CONNECT's or DIAL's fields here until ACCEPT (or the circuit's end)
and, on a RESET from the host's side whose code says "not this way" (`RETRYABLE`), sends
them again: to the next binding the terminator table picks (a CONNECT), or through the
next feasible route (a DIAL; every installed route strictly lowers the distance to the
service, so trying another never loops), excluding those tried, `MAX_TRIES` in all. A
DIAL that passed a standby host bound here for a remote primary falls back to that
standby when every route refuses, if this router checked its ticket. A refusal about the
dialer itself (its ticket) is never retried. Each record lives no longer than the
circuit's handshake deadline, so the table is bounded by the router's pending-handshake
limits.

An in-session open names its host process (`instance`): only bindings of that process are
tried, and when none is left the dialer gets `instance_gone` rather than the host's code, so
its SDK dials again with a handshake (another process of the service would have refused the
open anyway).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from umbranet.router.links import Route, SwitchLink
from umbranet.router.routes import RouteTable
from umbranet.router.terminators import Binding, TerminatorTable
from umbranet.wire import ErrorCode, Frame, FrameType, WireError
from umbranet.wire.control import decode_error

__all__ = [
    "MAX_TRIES",
    "RETRYABLE",
    "Connecting",
    "about_the_way",
    "PendingConnects",
    "move_to_next_host",
    "move_to_next_route",
    "move_to_standby",
    "redial",
]

MAX_TRIES = 3
"""Hosts (or routes) one dial is offered to before the dialer sees the last refusal."""
RETRYABLE = frozenset(
    code.code
    for code in (
        ErrorCode.NO_TERMINATOR,
        ErrorCode.HOST_GONE,
        ErrorCode.PEER_GONE,
        ErrorCode.REFUSED,
        ErrorCode.TOO_MANY_CIRCUITS,
        ErrorCode.OVERLOADED,
        ErrorCode.TRANSIT_REFUSED,
        ErrorCode.INSTANCE_GONE,
    )
)
"""Refusals that are about the way, not the dialer: another host or route may take it."""


@dataclass(slots=True)
class Connecting:
    """A CONNECT in flight: its control fields and blob, and the bindings tried so far."""

    fields: dict[str, Any]
    blob: bytes
    tried: list[tuple[Hashable, int]] = field(default_factory=list)
    local: bool = True  # a CONNECT to a host here; False: a DIAL to a neighbouring router
    # A DIAL sent past a standby host bound here (to a remote primary) whose ticket this
    # router checked: when every route refuses, that standby takes it.
    standby_here: bool = False

    @property
    def binding(self) -> int:
        return int(self.fields["binding"])


class PendingConnects:
    """Host-side route -> its `Connecting` record, until the host accepts."""

    def __init__(self) -> None:
        self._records: dict[Hashable, Connecting] = {}

    def put(self, route: Hashable, record: Connecting) -> None:
        self._records[route] = record

    def pop(self, route: Hashable) -> Connecting | None:
        return self._records.pop(route, None)

    def __len__(self) -> int:
        return len(self._records)


def move_to_next_host(
    route: Route,
    connecting: Connecting,
    terminators: TerminatorTable,
    max_circuits: int,
    now: int,
) -> bool:
    """Mark the refusing binding unhealthy and move the host-side `route` to the next host
    the service's strategy picks (not one already tried); False when there is none."""
    failed = terminators.find(route.link, connecting.binding)
    if failed is not None:
        terminators.failed(failed, now)
    if len(connecting.tried) >= MAX_TRIES:
        return False
    binding = _pick(terminators, route, connecting, now)
    return _connect_here(route, connecting, binding, max_circuits)


def _pick(
    terminators: TerminatorTable, route: Route, connecting: Connecting, now: int
) -> Binding | None:
    """The next host for a dial: the host process an in-session open names (only that
    one holds its session), else by the service's strategy."""
    instance = connecting.fields.get("instance")
    if instance:
        host = str(connecting.fields.get("host", ""))
        return terminators.pick_instance(
            route.service, now, host, str(instance), exclude=connecting.tried
        )
    return terminators.pick(route.service, now, dialer=route.dialer, exclude=connecting.tried)


def move_to_standby(
    route: Route, connecting: Connecting, terminators: TerminatorTable, max_circuits: int, now: int
) -> bool:
    """Every route to a remote primary refused: move the host-side `route` to a host bound
    here (a standby), as a CONNECT; False when there is none."""
    if not connecting.standby_here or len(connecting.tried) >= MAX_TRIES:
        return False
    binding = _pick(terminators, route, connecting, now)
    if not _connect_here(route, connecting, binding, max_circuits):
        return False
    connecting.local = True
    return True


def _connect_here(
    route: Route, connecting: Connecting, binding: Binding | None, max_circuits: int
) -> bool:
    target = binding.link if binding is not None else None
    if binding is None or not isinstance(target, SwitchLink):
        return False
    if len(target.routes) >= max_circuits:
        return False
    del route.link.routes[route.circuit]
    route.link, route.circuit = target, target.session.next_id(target.routes)
    target.routes[route.circuit] = route
    connecting.fields["binding"] = binding.binding_id
    connecting.tried.append((target, binding.binding_id))
    return True


def move_to_next_route(
    route: Route, connecting: Connecting, routes: RouteTable, max_circuits: int
) -> bool:
    """Move the host-side `route` (towards a neighbouring router that refused) to the next
    feasible route for its service not tried yet; False when there is none."""
    if len(connecting.tried) >= MAX_TRIES:
        return False
    hop = routes.next_via(route.service, [link for link, _ in connecting.tried])
    target = hop.link if hop is not None else None
    if not isinstance(target, SwitchLink) or len(target.routes) >= max_circuits:
        return False
    del route.link.routes[route.circuit]
    route.link, route.circuit = target, target.session.next_id(target.routes)
    target.routes[route.circuit] = route
    connecting.tried.append((target, 0))
    return True


def about_the_way(why: Frame | ErrorCode) -> bool:
    """Whether `why` (a next hop's RESET, or the code of its link's loss) is `RETRYABLE`."""
    if isinstance(why, ErrorCode):
        return why.code in RETRYABLE
    try:
        code, _reason = decode_error(why.payload)
    except WireError:
        return False
    return code.code in RETRYABLE


def redial(
    route: Route,
    connecting: Connecting,
    why: Frame | ErrorCode,
    routes: RouteTable,
    max_circuits: int,
    *,
    now: int,
) -> FrameType | None:
    """Move `route` to another host or route when `why` (the next hop's RESET, or the code
    of its link's loss) says the way, not the dialer, failed; returns the frame type to send
    the dial again with, or None."""
    if not about_the_way(why):
        return None
    if connecting.local:
        if move_to_next_host(route, connecting, routes.terminators, max_circuits, now):
            return FrameType.CONNECT
    elif move_to_next_route(route, connecting, routes, max_circuits):
        return FrameType.DIAL
    elif move_to_standby(route, connecting, routes.terminators, max_circuits, now):
        return FrameType.CONNECT
    return None
