"""Dials the last router has sent to a host that has not accepted yet: what it needs to send
the same dial to another host of the service when this one refuses.

A host can fail a dial before accepting (it is shutting down, over its backlog, its port
check refuses, its process hangs and resets): the dialer should not see that while another
host of the service is healthy. The switch keeps the CONNECT's fields here until ACCEPT
(or the circuit's end) and, on a RESET from the host's side, re-sends them to the next
binding the terminator table picks, excluding those tried, at most `MAX_TRIES` hosts in
all. Each record lives no longer than the circuit's handshake deadline, so the table is
bounded by the router's pending-handshake limits.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from umbranet.router.links import Route, SwitchLink
from umbranet.router.terminators import TerminatorTable

__all__ = ["MAX_TRIES", "Connecting", "PendingConnects", "move_to_next_host"]

MAX_TRIES = 3
"""Hosts one dial is offered to before the dialer sees the last host's refusal."""


@dataclass(slots=True)
class Connecting:
    """A CONNECT in flight: its control fields and blob, and the bindings tried so far."""

    fields: dict[str, Any]
    blob: bytes
    tried: list[tuple[Hashable, int]] = field(default_factory=list)

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
    binding = terminators.pick(route.service, now, dialer=route.dialer, exclude=connecting.tried)
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
