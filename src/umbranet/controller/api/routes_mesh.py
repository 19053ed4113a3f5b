"""The router mesh: a router reports its services and links, and gets its routes back.

One round trip per report keeps the routers' tables as fresh as their reports, with no
push channel to hold open; the graph and the path computation are in
`service/links.py`. The graph lives on the app (``app.state``), in memory: it is soft
state that the routers' next reports rebuild.
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from umbranet.controller.api.deps import AdminCaller, Ctx, RouterCaller
from umbranet.controller.service import NotFound
from umbranet.controller.service.links import MAX_LINKS, MAX_SERVICES, LinkGraph
from umbranet.schema import ErrorBody

__all__ = ["link_graph", "router"]

router = APIRouter(
    prefix="/v1",
    tags=["mesh"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


class MeshLinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    peer: str = Field(max_length=2048, description="the neighbouring router's SPIFFE ID")
    rtt_ms: float | None = Field(default=None, ge=0, le=600_000)


class RouterStateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    services: list[Annotated[str, Field(max_length=256)]] = Field(max_length=MAX_SERVICES)
    links: list[MeshLinkIn] = Field(max_length=MAX_LINKS)


class MeshRouteOut(BaseModel):
    service: str
    via: str = Field(description="SPIFFE ID of the neighbouring router to forward dials to")
    cost: float


class RouterStateOut(BaseModel):
    routes: list[MeshRouteOut]


class RouterCostIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cost: float = Field(ge=0, le=1_000_000, description="added to every path entering it")


class RouterCostOut(BaseModel):
    name: str
    spiffe_id: str
    cost: float


def link_graph(app: FastAPI) -> LinkGraph:
    """The app's mesh graph (made on first use)."""
    with _graph_lock:  # handlers run in a thread pool: make exactly one
        graph: LinkGraph | None = getattr(app.state, "link_graph", None)
        if graph is None:
            graph = app.state.link_graph = LinkGraph()
        return graph


_graph_lock = threading.Lock()


@router.post("/routers/me/state", response_model=RouterStateOut)
def post_router_state(
    body: RouterStateIn, request: Request, ctx: Ctx, caller: RouterCaller
) -> RouterStateOut:
    """The calling router's bound services and live router links; answers with the routes
    it should install (`service -> neighbour, cost`), replacing those it holds."""
    links = {link.peer: link.rtt_ms for link in body.links}
    routes = link_graph(request.app).report(
        caller.spiffe_id, body.services, links, ctx.clock().timestamp()
    )
    return RouterStateOut(
        routes=[MeshRouteOut(service=r.service, via=r.via, cost=r.cost) for r in routes]
    )


@router.put(
    "/routers/{name}/cost", response_model=RouterCostOut, responses={404: {"model": ErrorBody}}
)
def put_router_cost(
    name: str, body: RouterCostIn, request: Request, ctx: Ctx, caller: AdminCaller
) -> RouterCostOut:
    """An operator's cost for paths through the router `name` (0 clears it). Kept with the
    mesh graph, in memory: set it again after a controller restart (see docs/mesh.md)."""
    with ctx.transaction() as store:
        row = store.router_by_name(name)
        if row is None:
            raise NotFound("unknown_router", f"no router named {name!r}")
        spiffe_id = row.identity.spiffe_id
        store.audit(ctx.clock(), caller.spiffe_id, "router.cost", name, {"cost": body.cost})
    link_graph(request.app).set_admin_cost(spiffe_id, body.cost)
    return RouterCostOut(name=name, spiffe_id=spiffe_id, cost=body.cost)
