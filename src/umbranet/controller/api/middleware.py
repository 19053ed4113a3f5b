"""ASGI guards around the API: a body size cap and a last-resort 500 handler.

Both are plain ASGI (no per-request task or buffering): the cap stops reading a body past
`MAX_BODY` and answers 413 ``body_too_large``; the guard turns an unexpected exception into a
500 ``internal_error`` JSON response, logged once with its traceback, and does not re-raise,
so the server keeps serving and the log holds one entry per failure.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from umbranet.controller.api.routes_policy import POLICY_TEXT_MAX
from umbranet.controller.logfmt import safe
from umbranet.controller.metrics import Metrics

__all__ = ["MAX_BODY", "ROUTE_BODY_LIMITS", "GuardMiddleware"]

log = logging.getLogger("umbranet.controller.api")

MAX_BODY = 256 * 1024
"""The largest request body the API reads; its biggest input is a CSR of a few KiB."""

_POLICY_BODY = 2 * POLICY_TEXT_MAX + 64 * 1024
"""A policy document as JSON: every newline doubles in the string escape, plus the comment."""

ROUTE_BODY_LIMITS: dict[str, int] = {
    "/v1/recheck": 1024 * 1024,
    "/v1/policy": _POLICY_BODY,
    "/v1/policy/test": _POLICY_BODY,
}
"""Routes whose bodies are larger by design: a router's re-check of up to 1,024 grants, and a
policy text up to the length its model accepts (a 5,000-rule policy is about 1 MiB)."""


class _BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body reader lets it through
    to the error handlers (which answer 413) instead of re-wrapping it as a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class GuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body: int = MAX_BODY,
        route_limits: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.route_limits = ROUTE_BODY_LIMITS if route_limits is None else route_limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        received = 0
        limit = self.route_limits.get(scope.get("path", ""), self.max_body)

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        if _declared_length(scope) > limit:
            await self._refuse(scope, send, 413, "body_too_large", _too_large(limit))
            return
        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(scope, send, 413, "body_too_large", _too_large(limit))
        except Exception:
            log.exception(
                "request failed method=%s path=%s",
                safe(scope.get("method", "")),
                safe(scope.get("path", "")),
            )
            self.metrics.api_errors.labels(code="internal_error").inc()
            if not started:
                await _send_json(
                    send, 500, "internal_error", "the controller failed to serve this request"
                )

    async def _refuse(self, scope: Scope, send: Send, status: int, code: str, msg: str) -> None:
        self.metrics.api_errors.labels(code=code).inc()
        log.warning(
            "request refused method=%s path=%s status=%d code=%s reason=%s",
            safe(scope.get("method", "")),
            safe(scope.get("path", "")),
            status,
            code,
            safe(msg),
        )
        await _send_json(send, status, code, msg)


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes"


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


async def _send_json(send: Send, status: int, code: str, message: str) -> None:
    body: Any = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
