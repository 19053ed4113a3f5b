"""Public routes: the trust bundle and enrollment (no client certificate needed)."""

from __future__ import annotations

from fastapi import APIRouter

from umbranet.controller.api.convert import bundle_out, cert_pem
from umbranet.controller.api.deps import Ctx
from umbranet.controller.service import enrollment
from umbranet.pki.noise_pop import issue_challenge
from umbranet.schema import (
    BundleOut,
    EnrollIn,
    EnrollOut,
    ErrorBody,
    NoiseChallengeOut,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["public"])


@router.get("/bundle", response_model=BundleOut)
def get_bundle(ctx: Ctx) -> BundleOut:
    """The trust bundle: CA certificates and ticket-signing keys."""
    return bundle_out(ctx.authority.bundle)


@router.get("/noise-challenge", response_model=NoiseChallengeOut)
def get_noise_challenge(ctx: Ctx) -> NoiseChallengeOut:
    """A challenge for proving possession of a Noise key at enrollment and renewal (valid
    for 5 minutes; the controller keeps no state for it)."""
    challenge = issue_challenge(ctx.authority.noise_pop_secret, ctx.clock())
    return NoiseChallengeOut(challenge=challenge.challenge, public_key=challenge.public_key)


@router.post(
    "/enroll",
    response_model=EnrollOut,
    responses={
        400: {"model": ErrorBody},
        401: {"model": ErrorBody},
        403: {"model": ErrorBody},
        409: {"model": ErrorBody},
    },
)
def post_enroll(body: EnrollIn, ctx: Ctx) -> EnrollOut:
    """Exchange a one-time enrollment token and a CSR for an X.509-SVID."""
    now = ctx.clock()
    with ctx.transaction() as store:
        identity, cert = enrollment.enroll(
            store,
            ctx.authority,
            token=body.token,
            csr_pem=body.csr_pem,
            noise_public_key=body.noise_public_key,
            noise_challenge=body.noise_challenge,
            noise_proof=body.noise_proof,
            now=now,
        )
        result = EnrollOut(
            name=identity.name,
            spiffe_id=identity.spiffe_id,
            cert_pem=cert_pem(cert),
            bundle=bundle_out(ctx.authority.bundle),
        )
        kind = identity.kind  # read before the session closes
    ctx.metrics.enrollments.labels(kind=kind).inc()
    return result
