"""Management routes that change what exists (admin): identity attributes and deletion,
service updates, router deletion and new router enrollment tokens. Each change bumps the
epoch, so routers re-check live circuits and cached views refresh."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from umbranet.controller.api.convert import identity_out, service_out
from umbranet.controller.api.deps import AdminCaller, Ctx
from umbranet.controller.service import manage
from umbranet.schema import (
    EnrollmentTokenOut,
    ErrorBody,
    IdentityOut,
    Intercept,
    ServiceOut,
)

__all__ = ["router"]

router = APIRouter(
    prefix="/v1",
    tags=["management"],
    responses={
        400: {"model": ErrorBody},
        401: {"model": ErrorBody},
        403: {"model": ErrorBody},
        404: {"model": ErrorBody},
    },
)


class IdentityPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attributes: list[str] | None = Field(default=None, max_length=64)
    add_attributes: list[str] = Field(default_factory=list, max_length=64)
    remove_attributes: list[str] = Field(default_factory=list, max_length=64)


class ServicePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dial_attributes: list[str] | None = Field(default=None, max_length=64)
    bind_attributes: list[str] | None = Field(default=None, max_length=64)
    host_address: str | None = Field(default=None, max_length=300)
    clear_host_address: bool = False
    intercepts: list[Intercept] | None = Field(default=None, max_length=64)


@router.patch("/identities/{name}", response_model=IdentityOut)
def update_identity(name: str, body: IdentityPatch, ctx: Ctx, caller: AdminCaller) -> IdentityOut:
    with ctx.transaction() as store:
        row = manage.update_identity(
            store,
            name,
            attributes=body.attributes,
            add=body.add_attributes,
            remove=body.remove_attributes,
            actor=caller.spiffe_id,
            now=ctx.clock(),
        )
        out = identity_out(row)
        ctx.events.bump(f"attributes of {name} changed", store=store)
    return out


@router.delete("/identities/{name}", status_code=204, response_class=Response)
def delete_identity(name: str, ctx: Ctx, caller: AdminCaller) -> Response:
    with ctx.transaction() as store:
        manage.delete_identity(store, name, actor=caller.spiffe_id, now=ctx.clock())
        ctx.events.bump(f"identity {name} deleted", store=store)
    return Response(status_code=204)


@router.patch("/services/{name}", response_model=ServiceOut)
def update_service(name: str, body: ServicePatch, ctx: Ctx, caller: AdminCaller) -> ServiceOut:
    with ctx.transaction() as store:
        row = manage.update_service(
            store,
            name,
            dial_attributes=body.dial_attributes,
            bind_attributes=body.bind_attributes,
            host_address=body.host_address,
            clear_host_address=body.clear_host_address,
            intercepts=None
            if body.intercepts is None
            else [i.model_dump() for i in body.intercepts],
            actor=caller.spiffe_id,
            now=ctx.clock(),
        )
        out = service_out(row)
        ctx.events.bump(f"service {name} changed", store=store)
    return out


@router.delete("/routers/{name}", status_code=204, response_class=Response)
def delete_router(name: str, ctx: Ctx, caller: AdminCaller) -> Response:
    with ctx.transaction() as store:
        manage.delete_router(store, name, actor=caller.spiffe_id, now=ctx.clock())
        ctx.events.bump(f"router {name} deleted", store=store)
    return Response(status_code=204)


@router.post("/routers/{name}/enrollments", response_model=EnrollmentTokenOut, status_code=201)
def router_token(name: str, ctx: Ctx, caller: AdminCaller) -> EnrollmentTokenOut:
    with ctx.transaction() as store:
        token, revoked = manage.router_token(
            store, ctx.authority, name, actor=caller.spiffe_id, now=ctx.clock()
        )
        if revoked is not None:
            ctx.events.bump(
                f"certificates of router {name} revoked", revoked_keys=revoked, store=store
            )
    return EnrollmentTokenOut(enrollment_token=token)
