"""The push channel: `GET /v1/events` (server-sent events) and `POST /v1/recheck` for routers.

Subscribers receive `hello` with the current epoch at once, then an `epoch` event whenever
access may have been removed, and a comment line every 15 s so dead connections surface.

Resuming after a reconnect (to this replica or another) is the client's comparison: `hello`
carries the stored epoch, shared by every replica and read from the database at connect, so a
client whose last seen epoch is lower knows it missed events and re-checks everything (the
router) or drops its cached tickets (the SDK). The subscription starts before that read, so
an event committed meanwhile is either in `hello`'s epoch or delivered after it, never lost.
`hello` also lists the live replicas (``controllers``) clients fail over to, and a
``controllers`` event repeats the list whenever it changes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from umbranet.controller.api.deps import ClientCaller, Ctx, RouterCaller
from umbranet.controller.events import CLOSING
from umbranet.controller.service import recheck
from umbranet.schema import ErrorBody

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["events"], responses={401: {"model": ErrorBody}})

KEEPALIVE_SECONDS = 15.0
LIST_CHECK_SECONDS = 5.0
"""How often a stream compares the live replicas with the list it last sent."""


class GrantIn(BaseModel):
    identity: str = Field(max_length=2048)
    service: str = Field(max_length=256)
    action: str = Field(pattern="^(dial|bind)$")


class RecheckIn(BaseModel):
    grants: list[GrantIn] = Field(max_length=recheck.MAX_GRANTS_PER_REQUEST)


class DeniedOut(BaseModel):
    index: int
    reason: str


class RecheckOut(BaseModel):
    epoch: int
    denied: list[DeniedOut]


@router.get("/events", response_class=StreamingResponse)
async def events(ctx: Ctx, caller: ClientCaller) -> StreamingResponse:
    """Server-sent events: `hello` then `epoch` events, for routers and endpoints.

    Reasons name identities and services ("identity bob disabled"), so only routers and
    admins get them: an endpoint's view of the network must not grow from the push channel.
    """
    trusted = caller.kind in ("router", "admin")
    queue = ctx.events.subscribe()

    async def stream() -> AsyncIterator[bytes]:
        ctx.presence.enter(caller.spiffe_id)
        try:
            try:
                epoch = await asyncio.to_thread(ctx.events.stored_epoch)
            except sa.exc.SQLAlchemyError:
                epoch = ctx.events.epoch  # the database is away: nothing can move it now
            hello: dict[str, object] = {"epoch": epoch, "identity": caller.spiffe_id}
            hello["bundle_version"] = ctx.authority.bundle.version
            listed = ctx.controllers()
            hello["controllers"] = listed
            if trusted:
                hello["revoked_keys"] = ctx.events.revoked_keys()
            yield _sse("hello", hello)
            idle = 0.0
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), LIST_CHECK_SECONDS)
                except TimeoutError:
                    # A replica joined or left since `hello`: clients fail over to the
                    # replicas they know, so tell them at once, not at their next reconnect.
                    if (now_listed := ctx.controllers()) != listed:
                        listed = now_listed
                        yield _sse("controllers", {"controllers": listed})
                    idle += LIST_CHECK_SECONDS
                    if idle >= KEEPALIVE_SECONDS:
                        idle = 0.0
                        yield b": keepalive\n\n"
                    continue
                if event is CLOSING:
                    return  # the controller is stopping; the client reconnects
                data: dict[str, object] = {"epoch": event.epoch}
                if trusted:
                    data["reason"] = event.reason
                    if event.identities:
                        data["identities"] = list(event.identities)
                    if event.revoked_keys:
                        data["revoked_keys"] = list(event.revoked_keys)
                yield _sse("epoch", data)
        finally:
            ctx.events.unsubscribe(queue)
            ctx.presence.leave(caller.spiffe_id)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


class ControllersOut(BaseModel):
    controllers: list[str]


@router.get("/controllers", response_model=ControllersOut)
def get_controllers(ctx: Ctx, caller: ClientCaller) -> ControllersOut:
    """The live replicas' URLs, this one first: where clients fail over to."""
    return ControllersOut(controllers=ctx.controllers())


@router.post("/recheck", response_model=RecheckOut)
def post_recheck(body: RecheckIn, ctx: Ctx, caller: RouterCaller) -> RecheckOut:
    """Which of a router's live grants policy no longer allows, and why.

    At most `recheck.MAX_GRANTS_PER_REQUEST` grants per request (routers send chunks);
    grants without a current ticket are answered "close" without a policy decision.
    """
    grants = [recheck.Grant(g.identity, g.service, g.action) for g in body.grants]
    with ctx.transaction() as store:
        result = recheck.denied(
            store,
            grants,
            now=ctx.clock(),
            audit=ctx.deny_audit,
            metrics=ctx.metrics,
            router=caller.spiffe_id,
        )
    return RecheckOut(
        epoch=ctx.events.epoch,
        denied=[DeniedOut(index=i, reason=r) for i, r in sorted(result.items())],
    )


def _sse(event: str, data: dict[str, object]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
