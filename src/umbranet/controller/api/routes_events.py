"""The push channel: `GET /v1/events` (server-sent events) and `POST /v1/recheck` for routers.

Subscribers receive `hello` with the current epoch at once, then an `epoch` event whenever
access may have been removed, and a comment line every 15 s so dead connections surface.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

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
            hello: dict[str, object] = {"epoch": ctx.events.epoch, "identity": caller.spiffe_id}
            hello["bundle_version"] = ctx.authority.bundle.version
            if trusted:
                hello["revoked_keys"] = ctx.events.revoked_keys()
            yield _sse("hello", hello)
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
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
