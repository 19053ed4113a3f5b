"""Policy and audit routes (admin identity, mTLS): the policy document, its history, explain.

A saved or rolled-back policy bumps the event epoch, so routers re-check their live circuits
at once and close the ones the new version no longer allows (with the rule's reason).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from umbranet.controller.api.deps import AdminCaller, Ctx
from umbranet.controller.service import NotFound
from umbranet.controller.service import policy as policy_service
from umbranet.controller.service.policy import PolicyInfo
from umbranet.schema import ErrorBody

__all__ = ["router"]

router = APIRouter(
    prefix="/v1",
    tags=["policy"],
    responses={
        400: {"model": ErrorBody},
        401: {"model": ErrorBody},
        403: {"model": ErrorBody},
        404: {"model": ErrorBody},
    },
)


POLICY_TEXT_MAX = 4_000_000
"""The longest policy text the API takes: 5,000 rules with their comments fit well inside."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyIn(_In):
    text: str = Field(max_length=POLICY_TEXT_MAX)
    comment: str | None = Field(default=None, max_length=1000)


class PolicyTestIn(_In):
    text: str = Field(max_length=POLICY_TEXT_MAX)


class RollbackIn(_In):
    version: int = Field(ge=1)


class ExplainIn(_In):
    identity: str
    service: str
    action: str = "dial"
    port: int | None = Field(default=None, ge=0, le=65535)
    method: str | None = None
    path: str | None = None


class PolicyOut(BaseModel):
    version: int
    text: str
    created_at: datetime
    created_by: str
    comment: str | None


class PolicyVersionOut(BaseModel):
    """A history entry (without the text, which `GET /v1/policy` serves for the current one)."""

    version: int
    created_at: datetime
    created_by: str
    comment: str | None


class PolicyTestOut(BaseModel):
    valid: bool
    warnings: list[str]


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    decision_id: str | None = None


def _out(info: PolicyInfo) -> PolicyOut:
    return PolicyOut(
        version=info.version,
        text=info.text,
        created_at=info.created_at,
        created_by=info.created_by,
        comment=info.comment,
    )


@router.get("/policy", response_model=PolicyOut)
def get_policy(ctx: Ctx, caller: AdminCaller) -> PolicyOut:
    with ctx.transaction() as store:
        info = policy_service.get_policy(store)
    if info is None:
        raise NotFound("no_policy", "no policy has been saved yet")
    return _out(info)


@router.put("/policy", response_model=PolicyOut)
def put_policy(body: PolicyIn, ctx: Ctx, caller: AdminCaller) -> PolicyOut:
    """Validate, test and apply a policy document atomically; refused documents change nothing."""
    now = ctx.clock()
    with ctx.transaction() as store:
        info = policy_service.set_policy(
            store, body.text, actor=caller.spiffe_id, now=now, comment=body.comment
        )
        ctx.events.bump(f"policy version {info.version}", store=store)
    return _out(info)


@router.post("/policy/test", response_model=PolicyTestOut)
def test_policy(body: PolicyTestIn, ctx: Ctx, caller: AdminCaller) -> PolicyTestOut:
    """Validate and run a document's tests without applying it."""
    with ctx.transaction() as store:
        compiled = policy_service.test_policy(store, body.text)
    return PolicyTestOut(valid=True, warnings=list(compiled.warnings))


@router.get("/policy/history", response_model=list[PolicyVersionOut])
def policy_history(
    ctx: Ctx, caller: AdminCaller, limit: int = Query(default=100, ge=1, le=1000)
) -> list[PolicyVersionOut]:
    with ctx.transaction() as store:
        rows = policy_service.history(store, limit)
    return [
        PolicyVersionOut(
            version=r.version, created_at=r.created_at, created_by=r.created_by, comment=r.comment
        )
        for r in rows
    ]


@router.post("/policy/rollback", response_model=PolicyOut)
def rollback_policy(body: RollbackIn, ctx: Ctx, caller: AdminCaller) -> PolicyOut:
    """Put an old version back in force (stored as a new version)."""
    now = ctx.clock()
    with ctx.transaction() as store:
        info = policy_service.rollback(store, body.version, actor=caller.spiffe_id, now=now)
        ctx.events.bump(f"policy version {info.version}", store=store)
    return _out(info)


@router.post("/policy/explain")
def explain(body: ExplainIn, ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    """The verdict for one request under the policy in force, and every rule considered."""
    now = ctx.clock()
    with ctx.transaction() as store:
        return policy_service.explain(
            store,
            body.identity,
            body.service,
            action=body.action,
            port=body.port,
            method=body.method,
            path=body.path,
            now=now,
        )


@router.get("/policy/decisions/{decision_id}")
def decision(decision_id: str, ctx: Ctx, caller: AdminCaller) -> dict[str, Any]:
    """A refused ticket, by the decision id the endpoint was given: who asked for what, when,
    and the reason it was not told."""
    with ctx.transaction() as store:
        row = store.decision(decision_id[:32])
        if row is None:
            raise NotFound("unknown_decision", f"no refusal is recorded as {decision_id!r}")
        detail = dict(row.detail)
        reason = str(detail.get("reason", ""))
        return {
            "decision": row.decision_id,
            "at": row.at.isoformat(),
            "identity": detail.get("identity", row.actor),
            "service": row.target,
            "action": detail.get("action"),
            "kind": row.action,
            "reason": reason,
            "rendered": f"{row.actor} {detail.get('action')} {row.target}: refused, {reason}",
        }


@router.get("/audit", response_model=list[AuditOut])
def audit(
    ctx: Ctx,
    caller: AdminCaller,
    limit: int = Query(default=100, ge=1, le=1000),
    action: str | None = Query(default=None, max_length=64),
) -> list[AuditOut]:
    """Administrative changes and access refusals (``access.deny``, ``access.revoked``),
    newest first; ``action`` filters by one action or, ending in ``.``, a family of them."""
    with ctx.transaction() as store:
        return [
            AuditOut(
                id=e.id,
                at=e.at,
                actor=e.actor,
                action=e.action,
                target=e.target,
                detail=e.detail,
                decision_id=e.decision_id,
            )
            for e in store.audit_events(limit, action)
        ]
