"""Public routes: the trust bundle and enrollment (no client certificate needed)."""

from __future__ import annotations

from fastapi import APIRouter

from umbranet.controller.api.convert import bundle_out, cert_pem
from umbranet.controller.api.deps import Ctx
from umbranet.controller.api.models import BundleOut, EnrollIn, EnrollOut, ErrorBody
from umbranet.controller.service import enrollment

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["public"])


@router.get("/bundle", response_model=BundleOut)
def get_bundle(ctx: Ctx) -> BundleOut:
    """The trust bundle: CA certificates and ticket-signing keys."""
    return bundle_out(ctx.authority.bundle)


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
