"""Operators' mesh settings in the database, and the `MeshPolicy` the path computation uses.

Admin costs (per router and per link), no-transit routers and each service's terminator
strategy are stored (`store/mesh_models.py`), so they survive restarts and hold for every
controller replica. The API reads them into a `MeshPolicy` at most every
`POLICY_MAX_AGE` seconds (and at once after a change made through this replica): a change
made at another replica reaches this one's routes within that time.
"""

from __future__ import annotations

import sqlalchemy as sa

from umbranet.controller.service import BadRequest, NotFound
from umbranet.controller.service.links import STRATEGIES, MeshPolicy
from umbranet.controller.store import Router, Service, Store
from umbranet.controller.store.mesh_models import MeshLinkCost, MeshRouterSetting, ServiceRouting

__all__ = [
    "POLICY_MAX_AGE",
    "RouterSetting",
    "load_policy",
    "set_link_cost",
    "set_router_setting",
    "set_strategy",
]

POLICY_MAX_AGE = 10.0
"""Seconds a replica's copy of the settings may lag another replica's change."""

RouterSetting = tuple[float, bool]


def load_policy(store: Store) -> MeshPolicy:
    """Every stored setting, keyed by router SPIFFE ID and service name."""
    session = store.session
    routers = store.routers()
    spiffe = {r.id: r.identity.spiffe_id for r in routers}
    by_name = {r.identity.spiffe_id: r.name for r in routers}
    router_costs: dict[str, float] = {}
    no_transit: set[str] = set()
    for row in session.scalars(sa.select(MeshRouterSetting)):
        name = spiffe.get(row.router_id)
        if name is None:
            continue
        if row.cost:
            router_costs[name] = row.cost
        if row.no_transit:
            no_transit.add(name)
    link_costs: dict[frozenset[str], float] = {}
    for link in session.scalars(sa.select(MeshLinkCost)):
        a, b = spiffe.get(link.router_a), spiffe.get(link.router_b)
        if a is not None and b is not None and link.cost:
            link_costs[frozenset((a, b))] = link.cost
    strategies: dict[str, str] = {}
    transit_only: dict[str, frozenset[str]] = {}
    rows = session.execute(
        sa.select(Service.name, ServiceRouting.strategy, ServiceRouting.transit_only).join(
            ServiceRouting, ServiceRouting.service_id == Service.id
        )
    )
    for name, strategy, transit in rows:
        strategies[name] = strategy
        if transit is not None:  # names to SPIFFE IDs; routers deleted since drop out
            wanted = set(transit)
            transit_only[name] = frozenset(s for s, n in by_name.items() if n in wanted)
    return MeshPolicy(router_costs, link_costs, frozenset(no_transit), strategies, transit_only)


def set_router_setting(
    store: Store, name: str, cost: float | None, no_transit: bool | None
) -> tuple[Router, RouterSetting]:
    """Change a router's admin cost and/or no-transit flag (None keeps it)."""
    router = _router(store, name)
    row = store.session.get(MeshRouterSetting, router.id)
    if row is None:
        row = MeshRouterSetting(router_id=router.id, cost=0.0, no_transit=False)
        store.session.add(row)
    if cost is not None:
        row.cost = cost
    if no_transit is not None:
        row.no_transit = no_transit
    store.session.flush()
    return router, (row.cost, row.no_transit)


def set_link_cost(store: Store, name: str, peer: str, cost: float) -> tuple[Router, Router]:
    """An admin cost for the link between routers `name` and `peer` (0 clears it)."""
    first, second = _router(store, name), _router(store, peer)
    if first.id == second.id:
        raise BadRequest("bad_link", "a link joins two different routers")
    low, high = sorted((first.id, second.id))
    row = store.session.get(MeshLinkCost, (low, high))
    if cost == 0:
        if row is not None:
            store.session.delete(row)
    elif row is None:
        store.session.add(MeshLinkCost(router_a=low, router_b=high, cost=cost))
    else:
        row.cost = cost
    store.session.flush()
    return first, second


def set_strategy(
    store: Store,
    service: str,
    strategy: str | None,
    transit_only: list[str] | None = None,
    any_transit: bool = False,
) -> ServiceRouting:
    """How dials of `service` pick among its hosts (one of `STRATEGIES`), and the only
    routers they may cross (router names; `any_transit` clears the limit). None keeps."""
    if strategy is not None and strategy not in STRATEGIES:
        raise BadRequest("bad_strategy", f"strategy must be one of {', '.join(STRATEGIES)}")
    row = store.service_by_name(service)
    if row is None:
        raise NotFound("unknown_service", f"no service named {service!r}")
    for name in transit_only or ():
        _router(store, name)  # a typo must not silently block every path
    routing = store.session.get(ServiceRouting, row.id)
    if routing is None:
        routing = ServiceRouting(service_id=row.id, strategy="smart", transit_only=None)
        store.session.add(routing)
    if strategy is not None:
        routing.strategy = strategy
    if transit_only is not None:
        routing.transit_only = sorted(set(transit_only))
    if any_transit:
        routing.transit_only = None
    store.session.flush()
    return routing


def _router(store: Store, name: str) -> Router:
    row = store.router_by_name(name)
    if row is None:
        raise NotFound("unknown_router", f"no router named {name!r}")
    return row
