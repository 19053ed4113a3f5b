"""Network-mode routes: advertising and approving subnet routes and exit nodes, and
explaining a packet (``umbra policy explain alice 10.1.2.3:443/tcp``).

Advertising or approving a route bumps the event epoch: agents refresh their views at once,
so a client is given (or loses) the route, and the router's filter its grants, within the
agents' epoch polling interval.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from umbranet.controller.api.deps import AdminCaller, ClientCaller, Ctx
from umbranet.controller.service import routes as route_service
from umbranet.controller.service.addresses import addresses_for
from umbranet.controller.service.errors import BadRequest, NotFound
from umbranet.controller.service.policy import active_policy
from umbranet.controller.store import Identity
from umbranet.controller.store.overlay_models import OverlayAddress
from umbranet.policy import Subject
from umbranet.policy.network import NetTarget, explain_packet, parse_target
from umbranet.schema import ErrorBody

__all__ = ["router"]

router = APIRouter(
    prefix="/v1",
    tags=["network"],
    responses={
        400: {"model": ErrorBody},
        401: {"model": ErrorBody},
        403: {"model": ErrorBody},
        404: {"model": ErrorBody},
    },
)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AdvertiseIn(_In):
    routes: list[str] = Field(default_factory=list, max_length=route_service.MAX_ROUTES)
    exit_node: bool = False


class ApproveIn(_In):
    identity: str = Field(max_length=255)
    prefixes: list[str] = Field(min_length=1, max_length=route_service.MAX_ROUTES)
    approve: bool = True


class NetExplainIn(_In):
    identity: str = Field(max_length=255)
    target: str = Field(max_length=128, description="ADDRESS[:PORT][/tcp|udp|icmp]")


@router.put("/network/routes")
def put_routes(body: AdvertiseIn, ctx: Ctx, caller: ClientCaller) -> dict[str, Any]:
    """The caller advertises these prefixes (replacing what it advertised before); they
    count once approved by an admin or by the policy's autoApprovers."""
    with ctx.transaction() as store:
        identity = store.session.get(Identity, caller.id)
        assert identity is not None
        wanted = route_service.normalize_routes(
            body.routes,
            exit_node=body.exit_node,
            overlay=ctx.overlay,
            trust_domain=ctx.authority.trust_domain,
        )
        before = [
            r.prefix for r in route_service.route_table(store, None) if r.identity == identity.name
        ]
        stored = route_service.advertise(store, identity, wanted, now=ctx.clock())
        if sorted(before) != stored:
            ctx.events.bump(f"routes of {identity.name} changed", store=store)
        active = active_policy(store)
        table = route_service.route_table(store, active.compiled if active else None)
    return {"routes": [r.to_json() for r in table if r.identity == caller.name]}


@router.get("/network/routes")
def get_routes(ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    """Every advertised route and its approval (``admin:<who>``, ``policy`` or null)."""
    with ctx.transaction() as store:
        active = active_policy(store)
        table = route_service.route_table(store, active.compiled if active else None)
    return {"routes": [r.to_json() for r in table]}


@router.post("/network/routes/approve")
def approve_routes(body: ApproveIn, ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    """Approve (or, with ``approve: false``, withdraw approval of) advertised prefixes."""
    actor = caller.spiffe_id if body.approve else None
    with ctx.transaction() as store:
        done = route_service.approve(
            store, body.identity, body.prefixes, actor=actor, now=ctx.clock()
        )
        word = "approved" if body.approve else "unapproved"
        ctx.events.bump(f"routes of {body.identity} {word}", store=store)
    return {"identity": body.identity, "prefixes": done, "approved": body.approve}


@router.post("/network/explain")
def explain(body: NetExplainIn, ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    """May ``identity`` open a flow to ``target`` under the network rules in force? The
    target's address is mapped to the identity holding it when it is an overlay address, and
    to the approved routes that would carry it otherwise."""
    try:
        host, port, proto = parse_target(body.target)
    except ValueError as exc:
        raise BadRequest("invalid_target", str(exc)) from None
    with ctx.transaction() as store:
        subject_row = store.identity_by_name(body.identity)
        if subject_row is None:
            raise NotFound("unknown_identity", f"no identity is named {body.identity!r}")
        peer_row = store.identity_by_name(host)
        if peer_row is not None:
            found = addresses_for(store, [peer_row], ctx.overlay, ctx.authority.trust_domain)
            host = found[peer_row.id].ipv4
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise BadRequest(
                "invalid_target", f"{host!r} is neither an address nor an identity"
            ) from None
        if peer_row is None:
            peer_row = store.session.scalar(
                sa.select(Identity)
                .join(OverlayAddress, OverlayAddress.identity_id == Identity.id)
                .where(
                    sa.or_(OverlayAddress.ipv4 == str(address), OverlayAddress.ipv6 == str(address))
                )
            )
        peer = Subject.of(peer_row.name, peer_row.attributes) if peer_row is not None else None
        active = active_policy(store)
        compiled = active.compiled if active is not None else None
        carriers = [
            r.to_json()
            for r in route_service.route_table(store, compiled)
            if r.approved and address in ipaddress.ip_network(r.prefix)
        ]
        request = f"{body.identity} -> {body.target}"
        if compiled is None:
            reason = "no policy document in force: network rules need one (default deny)"
            return {"allowed": False, "reason": reason, "request": request, "rules": [],
                    "unrelated_rules": 0, "peer": None, "routes": carriers}  # fmt: skip
        subject = Subject.of(subject_row.name, subject_row.attributes)
        in_subnet = any(not r["exit_node"] for r in carriers)
        verdict, traces, unrelated = explain_packet(
            compiled, subject, NetTarget(address, peer, in_subnet), proto, port
        )
    return {
        "allowed": verdict.allowed,
        "reason": verdict.reason,
        "request": request,
        "peer": peer.name if peer is not None else None,
        "routes": carriers,
        "rules": [
            {
                "rule": t.label,
                "text": t.text,
                "matched": t.matched,
                "decisive": t.decisive,
                "why": t.why,
            }
            for t in traces
        ],
        "unrelated_rules": unrelated,
    }
