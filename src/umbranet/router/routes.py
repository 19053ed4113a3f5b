"""Where a dial for a service goes next from this router: a verdict, never a guess.

`RouteTable.next_hop(service, now)` answers `Local(binding)` (a host of the service is bound
here), `Via(link, cost)` (forward the dial to a neighbouring router) or `Refuse(code,
reason)`. Local hosts win over remote ones, except a local standby (precedence above 0)
when a remote route exists: the controller routes a router that has hosts of a service to
another one only when a host of better precedence is bound there (`controller/service/
links.py`), so the route leads to a primary. Remote routes are installed by whoever knows
the topology (a static configuration today, the controller's link graph once routers mesh);
each names the neighbour's link and a cost, and the cheapest live one is chosen.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field

from umbranet.router.terminators import Binding, TerminatorTable
from umbranet.wire import ErrorCode

__all__ = ["Local", "Refuse", "RouteTable", "Via"]


@dataclass(frozen=True, slots=True)
class Local:
    binding: Binding


@dataclass(frozen=True, slots=True)
class Via:
    link: Hashable
    cost: float


@dataclass(frozen=True, slots=True)
class Refuse:
    code: ErrorCode
    reason: str


@dataclass(slots=True)
class RouteTable:
    """Local terminators plus remote routes per service."""

    terminators: TerminatorTable = field(default_factory=TerminatorTable)
    _remote: dict[str, dict[Hashable, float]] = field(default_factory=dict)

    def next_hop(
        self, service: str, now: int, *, dialer: str = "", host: str = "", instance: str = ""
    ) -> Local | Via | Refuse:
        """Where a dial by `dialer` for `service` goes (a local host by the service's
        terminator strategy first; `host`, the one an in-session open names, if it may).
        With `instance` (an in-session open naming its host process): that process if it
        is bound here, whatever its precedence, else the cheapest remote route (the
        router before this one tries its other routes when this one refuses), else, when
        other hosts of the service are bound here, a refusal the dialer's SDK answers
        with a fresh dial (`instance_gone`); with none, `no_terminator`, as for any dial
        (a resume waits for routes then)."""
        if instance:
            return self._to_instance(service, now, host, instance)
        binding = self.terminators.pick(service, now, dialer=dialer, host=host)
        remote = self._remote.get(service)
        if binding is not None and (binding.precedence == 0 or not remote):
            return Local(binding)
        if remote:
            return _cheapest(remote)
        return Refuse(ErrorCode.NO_TERMINATOR, f"service {service!r} has no host at this router")

    def _to_instance(
        self, service: str, now: int, host: str, instance: str
    ) -> Local | Via | Refuse:
        binding = self.terminators.pick_instance(service, now, host, instance)
        if binding is not None:
            return Local(binding)
        remote = self._remote.get(service)
        if remote:
            return _cheapest(remote)
        if not self.terminators.serves(service):  # no way at all yet: as for any dial
            return Refuse(ErrorCode.NO_TERMINATOR, f"service {service!r} has no host here")
        return Refuse(
            ErrorCode.INSTANCE_GONE, f"the session's host of {service!r} is not bound this way"
        )

    def standby(self, service: str) -> bool:
        """Whether a host of `service` is bound here although dials go elsewhere first (a
        remote primary): the fallback when every remote route refuses."""
        return service in self._remote and self.terminators.serves(service)

    def next_via(self, service: str, exclude: Collection[Hashable] = ()) -> Via | None:
        """The cheapest remote route for `service` through a link not in `exclude` (a
        dial's fallback when the neighbour it tried refused)."""
        tried = {id(link) for link in exclude}
        remote = [
            (c, link) for link, c in self._remote.get(service, {}).items() if id(link) not in tried
        ]
        if not remote:
            return None
        cost, link = min(remote, key=lambda item: item[0])
        return Via(link, cost)

    def add_route(self, service: str, link: Hashable, cost: float) -> None:
        """Reach `service` through the neighbour on `link` (replacing its earlier cost)."""
        self._remote.setdefault(service, {})[link] = cost

    def remove_route(self, service: str, link: Hashable) -> None:
        routes = self._remote.get(service)
        if routes is not None:
            routes.pop(link, None)
            if not routes:
                del self._remote[service]

    def replace_remote(self, routes: Mapping[str, Mapping[Hashable, float]]) -> None:
        """Make `routes` (service -> link -> cost) the whole set of remote routes: what the
        controller computed replaces what it computed before, in one step."""
        self._remote = {service: dict(via) for service, via in routes.items() if via}

    def remote(self) -> dict[str, dict[Hashable, float]]:
        """A copy of the remote routes (service -> link -> cost)."""
        return {service: dict(via) for service, via in self._remote.items()}

    def link_gone(self, link: Hashable) -> None:
        """Forget every binding and remote route that used `link`."""
        self.terminators.remove_link(link)
        for service in list(self._remote):
            self.remove_route(service, link)


def _cheapest(remote: Mapping[Hashable, float]) -> Via:
    """The remote route of least cost (the first of equals)."""
    link, cost = min(remote.items(), key=lambda item: item[1])
    return Via(link, cost)
