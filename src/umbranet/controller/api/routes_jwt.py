"""JWT-SVID routes: the JWT authority's public keys (public) and a token for the caller (mTLS).

The agent's Workload API serves JWT-SVIDs to local workloads; it gets them here, so the
signing key never leaves the controller. The subject is always the authenticated caller:
there is no way to ask for a token naming anyone else.
"""

from __future__ import annotations

from fastapi import APIRouter

from umbranet.controller.api.deps import ClientCaller, Ctx
from umbranet.pki import SpiffeId
from umbranet.schema import ErrorBody, JwkOut, JwksOut, JwtSvidIn, JwtSvidOut

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["jwt-svid"])


@router.get("/jwt-bundle", response_model=JwksOut)
def get_jwt_bundle(ctx: Ctx) -> JwksOut:
    """The keys that verify JWT-SVIDs of this trust domain (a JWKS)."""
    jwks = ctx.authority.jwt_authority.bundle.to_jwks()
    return JwksOut(keys=[JwkOut.model_validate(key) for key in jwks["keys"]])


@router.post(
    "/jwt-svid",
    response_model=JwtSvidOut,
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)
def post_jwt_svid(body: JwtSvidIn, ctx: Ctx, caller: ClientCaller) -> JwtSvidOut:
    """A short-lived ES256 JWT-SVID naming the caller, for `audience`."""
    token, expires_at = ctx.authority.jwt_authority.sign(
        SpiffeId.parse(caller.spiffe_id),
        body.audience,
        ctx.clock(),
        ctx.authority.jwt_svid_lifetime,
    )
    ctx.metrics.jwt_svids.inc()
    return JwtSvidOut(token=token, expires_at=expires_at)
