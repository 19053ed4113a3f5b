"""The router mesh: a router reports its services and links, and gets its routes back; it
long-polls for changes so a dead or degraded link anywhere reroutes it at once.

One round trip per report keeps the routers' tables as fresh as their reports; `watch`
answers as soon as the graph's version moves past the one the router holds (or after
`WATCH_MAX` seconds), so route changes are pushed without a channel the controller must
keep state for. The graph and the path computation are in `service/links.py`; the
operators' settings in `service/mesh_policy.py` (stored). The graph lives on the app
(``app.state``), in memory: it is soft state that the routers' next reports rebuild.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from umbranet.controller.api.deps import AdminCaller, ClientCaller, Ctx, RouterCaller
from umbranet.controller.service import Forbidden, NotFound
from umbranet.controller.service.links import MAX_LINKS, MAX_SERVICES, LinkGraph
from umbranet.controller.service.mesh_policy import (
    POLICY_MAX_AGE,
    load_policy,
    set_link_cost,
    set_router_setting,
    set_strategy,
)
from umbranet.pki import PkiError
from umbranet.pki.tickets import Action, verify_ticket
from umbranet.schema import ErrorBody

__all__ = ["WATCH_MAX", "link_graph", "router"]

WATCH_MAX = 25.0
"""The longest a watch is held open before it answers with the unchanged version."""
RECOMPUTE_EVERY = 0.5
"""Seconds between path snapshots: a burst of reports (a cold start, a flapping link) costs
one rebuild per interval, not one per report (see `service/links.py`)."""

router = APIRouter(
    prefix="/v1",
    tags=["mesh"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)

Strategy = Literal["smart", "weighted", "random", "sticky", "precedence"]


class MeshLinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    peer: str = Field(max_length=2048, description="the neighbouring router's SPIFFE ID")
    rtt_ms: float | None = Field(default=None, ge=0, le=600_000)


class RouterStateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    services: list[Annotated[str, Field(max_length=256)]] = Field(max_length=MAX_SERVICES)
    links: list[MeshLinkIn] = Field(max_length=MAX_LINKS)
    circuits: int = Field(default=0, ge=0, le=10_000_000, description="live circuits (load)")
    standby: dict[Annotated[str, Field(max_length=256)], Annotated[int, Field(ge=1, le=9)]] = Field(
        default_factory=dict,
        max_length=MAX_SERVICES,
        description="services whose best host here is a standby -> its precedence rank",
    )


class MeshRouteOut(BaseModel):
    service: str
    via: str = Field(description="SPIFFE ID of the neighbouring router to forward dials to")
    cost: float


class RouterStateOut(BaseModel):
    routes: list[MeshRouteOut]
    strategies: dict[str, str] = Field(
        default_factory=dict, description="terminator strategy of services bound here"
    )
    version: int = Field(default=0, description="the graph version these routes are from")
    no_transit: bool = Field(
        default=False, description="this router is marked no-transit: it refuses to be a middle hop"
    )


class MeshVersionOut(BaseModel):
    version: int


class RouterCostIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cost: float | None = Field(
        default=None, ge=0, le=1_000_000, description="added to every path entering it"
    )
    no_transit: bool | None = Field(default=None, description="never a middle hop")


class RouterCostOut(BaseModel):
    name: str
    spiffe_id: str
    cost: float
    no_transit: bool = False


class LinkCostIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cost: float = Field(ge=0, le=1_000_000, description="added to paths over this link")


class LinkCostOut(BaseModel):
    routers: list[str]
    cost: float


class StrategyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: Strategy | None = None
    transit_only: list[Annotated[str, Field(max_length=63)]] | None = Field(
        default=None, max_length=256, description="the only routers its dials may cross"
    )
    any_transit: bool = Field(default=False, description="clear transit_only")


class StrategyOut(BaseModel):
    service: str
    strategy: str
    transit_only: list[str] | None = None


def link_graph(app: FastAPI) -> LinkGraph:
    """The app's mesh graph (made on first use)."""
    with _graph_lock:  # handlers run in a thread pool: make exactly one
        graph: LinkGraph | None = getattr(app.state, "link_graph", None)
        if graph is None:
            graph = app.state.link_graph = LinkGraph(recompute_every=RECOMPUTE_EVERY)
            app.state.link_policy_at = float("-inf")
        return graph


_graph_lock = threading.Lock()


def _fresh_graph(request: Request, ctx: Ctx, force: bool = False) -> LinkGraph:
    """The graph with the stored settings no older than `POLICY_MAX_AGE`."""
    graph = link_graph(request.app)
    state = request.app.state
    now = time.monotonic()
    if force or now - state.link_policy_at > POLICY_MAX_AGE:
        with ctx.transaction() as store:
            policy = load_policy(store)
        graph.set_policy(policy)
        state.link_policy_at = now
    return graph


@router.post("/routers/me/state", response_model=RouterStateOut)
def post_router_state(
    body: RouterStateIn, request: Request, ctx: Ctx, caller: RouterCaller
) -> RouterStateOut:
    """The calling router's bound services, live circuits and live router links; answers
    with the routes it should install (`service -> neighbour, cost`), replacing those it
    holds, and the strategies of the services bound there."""
    graph = _fresh_graph(request, ctx)
    links = {link.peer: link.rtt_ms for link in body.links}
    routes = graph.report(
        caller.spiffe_id,
        body.services,
        links,
        ctx.clock().timestamp(),
        body.circuits,
        mono=time.monotonic(),
        standby=body.standby,
    )
    return RouterStateOut(
        routes=[MeshRouteOut(service=r.service, via=r.via, cost=r.cost) for r in routes],
        strategies=graph.strategies_for(body.services),
        version=graph.version,
        no_transit=caller.spiffe_id in graph.policy.no_transit,
    )


@router.get("/routers/me/watch", response_model=MeshVersionOut)
async def watch_mesh(
    request: Request,
    caller: RouterCaller,
    after: Annotated[int, Query(ge=0)] = 0,
    wait: Annotated[float, Query(ge=0, le=WATCH_MAX)] = WATCH_MAX,
) -> MeshVersionOut:
    """Answer once the graph's version is past `after` and the caller's routes (or its
    services' strategies) differ from its last answer (at once if they already do), or
    after `wait` seconds: a router reports again when the version differs from its own."""
    graph = link_graph(request.app)
    me = caller.spiffe_id
    if graph.version != after and graph.changed_for(me):
        return MeshVersionOut(version=graph.version)
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def wake(_version: int) -> None:
        loop.call_soon_threadsafe(changed.set)

    stop = graph.watch(wake)
    deadline = time.monotonic() + wait
    try:
        # Wake at least every rebuild interval: a change deferred by the pacing is built
        # here if no report comes to build it.
        seen = graph.version
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, max(RECOMPUTE_EVERY, 0.05)))
            changed.clear()
            graph.refresh(time.monotonic())
            if graph.version != seen:
                seen = graph.version
                if graph.changed_for(me):  # only routers whose answer moved report again
                    break
    finally:
        stop()
    return MeshVersionOut(version=graph.version)


@router.get("/mesh")
def get_mesh(request: Request, ctx: Ctx, caller: AdminCaller) -> dict[str, object]:
    """(Admin.) The mesh as the controller sees it: routers with their load and services,
    confirmed edges with their cost, and the stored settings."""
    graph = _fresh_graph(request, ctx)
    view = graph.paths()
    policy = graph.policy
    view["settings"] = {
        "router_costs": dict(policy.router_costs),
        "no_transit": sorted(policy.no_transit),
        "link_costs": [
            {"routers": sorted(pair), "cost": cost} for pair, cost in policy.link_costs.items()
        ],
        "strategies": dict(policy.strategies),
    }
    return view


@router.get("/mesh/path", responses={404: {"model": ErrorBody}})
def get_mesh_path(
    request: Request,
    ctx: Ctx,
    caller: AdminCaller,
    service: Annotated[str, Query(max_length=256)],
    source: Annotated[str, Query(alias="from", max_length=63)],
) -> dict[str, object]:
    """(Admin.) The routers a dial for `service` entering at router `from` crosses, with
    each hop's link RTT, by the controller's current routes."""
    with ctx.transaction() as store:
        rows = store.routers()
        names = {r.identity.spiffe_id: r.name for r in rows}
        start = next((r.identity.spiffe_id for r in rows if r.name == source), None)
    if start is None:
        raise NotFound("unknown_router", f"no router named {source!r}")
    hops = _fresh_graph(request, ctx).path(start, service)
    for hop in hops:
        hop["name"] = names.get(str(hop["router"])) if hop["router"] else None
    return {"service": service, "from": source, "hops": hops}


class MyPathIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    ticket: str = Field(max_length=16384, description="a current dial ticket of the caller's")
    source: str = Field(
        alias="from", max_length=2048, description="the router the dial enters at (name)"
    )


@router.post("/me/path", responses={403: {"model": ErrorBody}, 404: {"model": ErrorBody}})
def post_my_path(
    body: MyPathIn, request: Request, ctx: Ctx, caller: ClientCaller
) -> dict[str, object]:
    """(Any identity.) The routers a dial for the service of `ticket` entering at router
    `from` crosses, with each hop's link RTT, by the controller's current routes: what
    `umbra ping` shows beyond the hop it measures itself. The caller's own current dial
    ticket is the proof that it may dial the service; nothing else of the mesh is shown."""
    try:
        ticket = verify_ticket(body.ticket, ctx.authority.bundle, ctx.clock())
    except PkiError as exc:
        raise Forbidden("bad_ticket", f"not a current ticket: {exc}") from None
    if ticket.spiffe_id != caller.spiffe_id or ticket.action is not Action.DIAL:
        raise Forbidden("bad_ticket", "not a dial ticket of the caller's")
    with ctx.transaction() as store:
        names = {r.identity.spiffe_id: r.name for r in store.routers()}
    start = next((spiffe for spiffe, name in names.items() if name == body.source), None)
    if start is None:
        raise NotFound("unknown_router", f"no router named {body.source!r}")
    hops = _fresh_graph(request, ctx).path(start, ticket.service)
    for hop in hops:
        hop["name"] = names.get(str(hop["router"])) if hop["router"] else None
    return {"service": ticket.service, "from": body.source, "hops": hops}


@router.put(
    "/routers/{name}/cost", response_model=RouterCostOut, responses={404: {"model": ErrorBody}}
)
def put_router_cost(
    name: str, body: RouterCostIn, request: Request, ctx: Ctx, caller: AdminCaller
) -> RouterCostOut:
    """An operator's cost for paths through the router `name` (0 clears it) and whether it
    may carry transit traffic; fields not given stay. Stored: holds across restarts."""
    with ctx.transaction() as store:
        row, (cost, no_transit) = set_router_setting(store, name, body.cost, body.no_transit)
        spiffe_id = row.identity.spiffe_id
        store.audit(
            ctx.clock(),
            caller.spiffe_id,
            "router.cost",
            name,
            {"cost": cost, "no_transit": no_transit},
        )
    _fresh_graph(request, ctx, force=True)
    return RouterCostOut(name=name, spiffe_id=spiffe_id, cost=cost, no_transit=no_transit)


@router.put(
    "/routers/{name}/links/{peer}/cost",
    response_model=LinkCostOut,
    responses={404: {"model": ErrorBody}},
)
def put_link_cost(
    name: str, peer: str, body: LinkCostIn, request: Request, *, ctx: Ctx, caller: AdminCaller
) -> LinkCostOut:
    """An operator's cost for the link between routers `name` and `peer` (0 clears it)."""
    with ctx.transaction() as store:
        set_link_cost(store, name, peer, body.cost)
        store.audit(
            ctx.clock(),
            caller.spiffe_id,
            "router.link_cost",
            name,
            {"peer": peer, "cost": body.cost},
        )
    _fresh_graph(request, ctx, force=True)
    return LinkCostOut(routers=sorted((name, peer)), cost=body.cost)


@router.put(
    "/services/{name}/strategy", response_model=StrategyOut, responses={404: {"model": ErrorBody}}
)
def put_strategy(
    name: str, body: StrategyIn, request: Request, ctx: Ctx, caller: AdminCaller
) -> StrategyOut:
    """How the routers pick among the hosts of `name`, and the only routers its dials may
    cross as middle hops (see docs/mesh.md); fields not given stay."""
    with ctx.transaction() as store:
        routing = set_strategy(store, name, body.strategy, body.transit_only, body.any_transit)
        result = StrategyOut(
            service=name, strategy=routing.strategy, transit_only=routing.transit_only
        )
        store.audit(ctx.clock(), caller.spiffe_id, "service.strategy", name, result.model_dump())
    _fresh_graph(request, ctx, force=True)
    return result
