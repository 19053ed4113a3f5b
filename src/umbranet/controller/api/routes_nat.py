"""NAT traversal routes (issue 14): STUN servers, candidate signalling, TURN credentials.

- ``PUT /v1/routers/self/stun`` (router): where this router answers STUN binding requests.
- ``GET /v1/network/nat`` (any identity): the STUN servers, and a fresh TURN credential when
  the network has TURN configured.
- ``PUT /v1/network/candidates`` / ``GET /v1/network/candidates``: publish this identity's
  candidates; read those of the peers the caller's filtered view lists (and no others).
- ``PUT /v1/network/turn`` (admin): the TURN servers and their shared secret.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from umbranet.controller.api.deps import AdminCaller, ClientCaller, Ctx, RouterCaller
from umbranet.controller.service import nat, views
from umbranet.controller.store import Identity, Store
from umbranet.schema import ErrorBody

__all__ = ["router"]

router = APIRouter(
    prefix="/v1",
    tags=["nat"],
    responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StunIn(_In):
    host: str = Field(max_length=64)
    port: int = Field(ge=1, le=65535)


class CandidatesIn(_In):
    candidates: list[dict[str, Any]] = Field(max_length=nat.MAX_CANDIDATES)
    nat: str = Field(default="unknown", max_length=32)


class TurnIn(_In):
    urls: list[str] = Field(min_length=1, max_length=8)
    realm: str = Field(max_length=255)
    secret: str = Field(min_length=16, max_length=255)
    ttl_seconds: int = 3600


def _identity(store: Store, caller_id: int) -> Identity:
    identity = store.session.get(Identity, caller_id)
    assert identity is not None  # authenticated a moment ago
    return identity


@router.put("/routers/self/stun")
def put_router_stun(body: StunIn, ctx: Ctx, caller: RouterCaller) -> dict[str, str]:
    with ctx.transaction() as store:
        address = nat.set_router_stun(
            store, _identity(store, caller.id), body.host, body.port, ctx.clock()
        )
    return {"address": address}


@router.get("/network/nat")
def get_network_nat(ctx: Ctx, caller: ClientCaller) -> dict[str, Any]:
    with ctx.transaction() as store:
        servers = nat.stun_servers(store)
        credential = nat.turn_credential(store, _identity(store, caller.id), ctx.clock())
    turn = None
    if credential is not None:
        turn = {
            "urls": credential.urls,
            "username": credential.username,
            "password": credential.password,
            "realm": credential.realm,
            "expires": credential.expires,
        }
    return {"stun": list(servers), "stun_routers": servers, "turn": turn}


@router.put("/network/candidates")
def put_candidates(body: CandidatesIn, ctx: Ctx, caller: ClientCaller) -> dict[str, Any]:
    with ctx.transaction() as store:
        clean = nat.set_candidates(
            store, _identity(store, caller.id), body.candidates, body.nat, ctx.clock()
        )
    return {"candidates": clean, "nat": body.nat}


@router.get("/network/candidates")
def get_candidates(ctx: Ctx, caller: ClientCaller) -> dict[str, Any]:
    """Candidates of the caller's peers: exactly the identities its filtered view lists."""
    with ctx.transaction() as store:
        identity = _identity(store, caller.id)
        # As the device's own view (network mode): peers that only `network` rules relate
        # to it need each other's candidates most.
        view = views.view_of(
            store,
            identity,
            now=ctx.clock(),
            epoch=ctx.events.epoch,
            overlay=ctx.overlay,
            trust_domain=ctx.authority.trust_domain,
        )
        peers = views.identities_named(store, {p.name for p in view.peers})
        return {"peers": nat.candidates_of(store, peers)}


@router.put("/network/turn", status_code=204)
def put_turn(body: TurnIn, ctx: Ctx, caller: AdminCaller) -> None:
    with ctx.transaction() as store:
        nat.set_turn(store, body.urls, body.realm, body.secret, body.ttl_seconds)
