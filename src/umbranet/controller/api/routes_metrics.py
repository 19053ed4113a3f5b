"""``GET /metrics`` (Prometheus text, admin only) and the middleware that counts API requests.

The endpoint lives on the API port behind the same mutual TLS as every admin route, so the
controller opens no second port and the numbers (which name services and routes) are not
public: a scraper presents an admin identity's certificate and key (Prometheus's
``tls_config: {cert_file, key_file, ca_file}``). ``GET /v1/metrics`` keeps serving the same
counters as JSON for ``umbra`` and scripts.

Requests are counted by route *template* (``/v1/identities/{name}``), never the raw path, so a
scanner probing random paths adds one ``route="unmatched"`` series, not one per path.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from umbranet.controller.api.deps import AdminCaller, Ctx
from umbranet.controller.metrics import Metrics
from umbranet.obs import CONTENT_TYPE, render

__all__ = ["RequestMetrics", "router"]

router = APIRouter(tags=["admin"])


@router.get("/metrics", response_class=Response)
def get_metrics(ctx: Ctx, caller: AdminCaller) -> Response:
    """Every controller metric in the Prometheus text format (see docs/metrics.md)."""
    return Response(render(ctx.metrics.registry), media_type=CONTENT_TYPE)


class RequestMetrics:
    """Counts each answered request by route, method and status, and times it.

    Installed outermost, so refusals made by the other guards (a 413, a last-resort 500) are
    counted too. The count is taken when the response starts, so a long event stream shows up
    at once; its duration is observed when it ends.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = str(scope.get("method", "?"))

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.api_requests.labels(
                    route=_route(scope), method=method, status=str(message["status"])
                ).inc()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.api_latency.labels(route=_route(scope), method=method).observe(
                time.perf_counter() - started
            )


def _route(scope: Scope) -> str:
    """The matched route's path template (FastAPI puts the route in the scope)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"
