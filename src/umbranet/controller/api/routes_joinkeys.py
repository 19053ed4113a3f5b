"""Join-key routes: admins create, list and revoke keys; replicas redeem them.

``POST /v1/joinkeys/redeem`` needs no client certificate (the replica has no identity yet): the
key's secret is the credential, and it is sent only over TLS pinned to the CA the key names.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from umbranet.controller.api.deps import AdminCaller, Ctx
from umbranet.controller.service import joinkeys
from umbranet.controller.store.joinkey_models import JoinKey
from umbranet.schema import ErrorBody

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/joinkeys",
    tags=["join keys"],
    responses={
        400: {"model": ErrorBody},
        401: {"model": ErrorBody},
        403: {"model": ErrorBody},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
    },
)


class JoinKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reusable: bool = False
    ephemeral_seconds: int | None = Field(default=None, description="offline time before removal")
    attributes: list[str] = Field(default_factory=list, max_length=64)
    expires_seconds: int = Field(default=86400, description="lifetime of the key")


class JoinKeyOut(BaseModel):
    id: str
    attributes: list[str]
    reusable: bool
    ephemeral_seconds: int | None
    expires_at: datetime
    created_at: datetime
    created_by: str
    uses: int
    revoked_at: datetime | None


class JoinKeyCreatedOut(BaseModel):
    key: JoinKeyOut
    join_key: str


class RedeemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    join_key: str = Field(max_length=4096)
    name_prefix: str | None = Field(default=None, max_length=48)


class RedeemOut(BaseModel):
    name: str
    spiffe_id: str
    enrollment_token: str


def _out(row: JoinKey) -> JoinKeyOut:
    return JoinKeyOut(
        id=row.id,
        attributes=list(row.attributes),
        reusable=row.reusable,
        ephemeral_seconds=row.ephemeral_seconds,
        expires_at=row.expires_at,
        created_at=row.created_at,
        created_by=row.created_by,
        uses=row.uses,
        revoked_at=row.revoked_at,
    )


@router.post("", response_model=JoinKeyCreatedOut, status_code=201)
def create_join_key(body: JoinKeyIn, ctx: Ctx, caller: AdminCaller) -> JoinKeyCreatedOut:
    """A new join key; its text is shown this once."""
    with ctx.transaction() as store:
        row, text = joinkeys.create_join_key(
            store,
            ctx.authority,
            reusable=body.reusable,
            ephemeral_seconds=body.ephemeral_seconds,
            attributes=body.attributes,
            lifetime=timedelta(seconds=body.expires_seconds),
            actor=caller.spiffe_id,
            now=ctx.clock(),
        )
        return JoinKeyCreatedOut(key=_out(row), join_key=text)


@router.get("", response_model=list[JoinKeyOut])
def list_join_keys(ctx: Ctx, caller: AdminCaller) -> list[JoinKeyOut]:
    with ctx.transaction() as store:
        return [_out(row) for row in joinkeys.list_join_keys(store)]


@router.delete("/{key_id}", response_model=JoinKeyOut)
def revoke_join_key(key_id: str, ctx: Ctx, caller: AdminCaller) -> JoinKeyOut:
    """Stop the key from creating identities (those it created stay)."""
    with ctx.transaction() as store:
        row = joinkeys.revoke_join_key(store, key_id, actor=caller.spiffe_id, now=ctx.clock())
        return _out(row)


@router.post("/redeem", response_model=RedeemOut)
def redeem(body: RedeemIn, ctx: Ctx) -> RedeemOut:
    """A new identity for this replica and its one-time enrollment token."""
    with ctx.transaction() as store:
        identity, token = joinkeys.redeem(
            store,
            ctx.authority,
            join_key=body.join_key,
            name_prefix=body.name_prefix,
            now=ctx.clock(),
        )
        return RedeemOut(name=identity.name, spiffe_id=identity.spiffe_id, enrollment_token=token)
