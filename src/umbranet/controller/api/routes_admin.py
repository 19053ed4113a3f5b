"""Management routes (admin identity, mTLS): identities, services, routers, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response

from umbranet.controller.api.convert import identity_out, router_out, service_out
from umbranet.controller.api.deps import AdminCaller, Ctx
from umbranet.controller.service import identities, routers, services
from umbranet.schema import (
    EnrollmentTokenOut,
    ErrorBody,
    IdentityCreatedOut,
    IdentityIn,
    IdentityOut,
    MetricsOut,
    RouterCreatedOut,
    RouterIn,
    ServiceIn,
    ServiceOut,
)

__all__ = ["router"]

router = APIRouter(
    prefix="/v1",
    tags=["management"],
    responses={
        401: {"model": ErrorBody},
        403: {"model": ErrorBody},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
    },
)


@router.post("/identities", response_model=IdentityCreatedOut, status_code=201)
def create_identity(body: IdentityIn, ctx: Ctx, caller: AdminCaller) -> IdentityCreatedOut:
    now = ctx.clock()
    with ctx.transaction() as store:
        identity, token = identities.create_identity(
            store,
            ctx.authority,
            name=body.name,
            kind=body.kind,
            attributes=body.attributes,
            actor=caller.spiffe_id,
            now=now,
        )
        return IdentityCreatedOut(identity=identity_out(identity), enrollment_token=token)


@router.get("/identities", response_model=list[IdentityOut])
def list_identities(ctx: Ctx, caller: AdminCaller) -> list[IdentityOut]:
    with ctx.transaction() as store:
        return [identity_out(i) for i in identities.list_identities(store)]


@router.get("/identities/{name}", response_model=IdentityOut)
def get_identity(name: str, ctx: Ctx, caller: AdminCaller) -> IdentityOut:
    with ctx.transaction() as store:
        return identity_out(identities.get_identity(store, name))


@router.post("/identities/{name}/disable", response_model=IdentityOut)
def disable_identity(name: str, ctx: Ctx, caller: AdminCaller) -> IdentityOut:
    now = ctx.clock()
    with ctx.transaction() as store:
        row = identities.disable_identity(store, name, actor=caller.spiffe_id, now=now)
        out = identity_out(row)
        ctx.events.bump(f"identity {name} disabled", store=store)
    return out


@router.post("/identities/{name}/enable", response_model=IdentityOut)
def enable_identity(name: str, ctx: Ctx, caller: AdminCaller) -> IdentityOut:
    now = ctx.clock()
    with ctx.transaction() as store:
        row = identities.enable_identity(store, name, actor=caller.spiffe_id, now=now)
        return identity_out(row)


@router.post("/identities/{name}/revoke", response_model=EnrollmentTokenOut)
def revoke_certificates(name: str, ctx: Ctx, caller: AdminCaller) -> EnrollmentTokenOut:
    """Revoke the identity's certificates: live streams close, old tickets go stale; the
    answer is a fresh enrollment token for the identity's new key."""
    now = ctx.clock()
    with ctx.transaction() as store:
        token, keys = identities.revoke_certificates(
            store, ctx.authority, name, actor=caller.spiffe_id, now=now
        )
        ctx.events.bump(f"certificates of {name} revoked", revoked_keys=keys, store=store)
    return EnrollmentTokenOut(enrollment_token=token)


@router.post("/identities/{name}/enrollments", response_model=EnrollmentTokenOut, status_code=201)
def new_enrollment(name: str, ctx: Ctx, caller: AdminCaller) -> EnrollmentTokenOut:
    now = ctx.clock()
    with ctx.transaction() as store:
        token, revoked = identities.new_enrollment(
            store, ctx.authority, name, actor=caller.spiffe_id, now=now
        )
        if revoked is not None:
            ctx.events.bump(f"certificates of {name} revoked", revoked_keys=revoked, store=store)
    return EnrollmentTokenOut(enrollment_token=token)


@router.post("/services", response_model=ServiceOut, status_code=201)
def create_service(body: ServiceIn, ctx: Ctx, caller: AdminCaller) -> ServiceOut:
    now = ctx.clock()
    with ctx.transaction() as store:
        row = services.create_service(
            store,
            name=body.name,
            dial_attributes=body.dial_attributes,
            bind_attributes=body.bind_attributes,
            host_address=body.host_address,
            intercepts=[i.model_dump() for i in body.intercepts],
            actor=caller.spiffe_id,
            now=now,
        )
        return service_out(row)


@router.get("/services", response_model=list[ServiceOut])
def list_services(ctx: Ctx, caller: AdminCaller) -> list[ServiceOut]:
    with ctx.transaction() as store:
        return [service_out(s) for s in services.list_services(store)]


@router.delete("/services/{name}", status_code=204, response_class=Response)
def delete_service(name: str, ctx: Ctx, caller: AdminCaller) -> Response:
    now = ctx.clock()
    with ctx.transaction() as store:
        services.delete_service(store, name, actor=caller.spiffe_id, now=now)
        ctx.events.bump(f"service {name} deleted", store=store)
    return Response(status_code=204)


@router.post("/routers", response_model=RouterCreatedOut, status_code=201)
def create_router(body: RouterIn, ctx: Ctx, caller: AdminCaller) -> RouterCreatedOut:
    now = ctx.clock()
    with ctx.transaction() as store:
        row, token = routers.create_router(
            store, ctx.authority, body.name, actor=caller.spiffe_id, now=now
        )
        return RouterCreatedOut(router=router_out(row), enrollment_token=token)


@router.get("/metrics", response_model=MetricsOut)
def get_metrics(ctx: Ctx, caller: AdminCaller) -> MetricsOut:
    """In-process counters: access verdicts and refused requests by code."""
    return MetricsOut(counters={k: int(v) for k, v in ctx.metrics.snapshot().items()})
