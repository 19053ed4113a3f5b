"""The controller's FastAPI application factory.

`create_app` wires routes, error handlers and guards around an `AppContext`; it reads no
files and starts nothing, so tests build one around an in-memory authority, a temporary
database and a fake clock, and drive it with the client certificate injected in the scope.
"""

from __future__ import annotations

from fastapi import FastAPI

from umbranet import __version__
from umbranet.controller.api import (
    routes_admin,
    routes_client,
    routes_events,
    routes_health,
    routes_joinkeys,
    routes_jwt,
    routes_manage,
    routes_mesh,
    routes_metrics,
    routes_nat,
    routes_network,
    routes_policy,
    routes_public,
)
from umbranet.controller.api.context import AppContext, Clock, system_clock
from umbranet.controller.api.errors import install_error_handlers
from umbranet.controller.api.middleware import GuardMiddleware
from umbranet.controller.metrics import Metrics
from umbranet.controller.service import Authority
from umbranet.controller.store import Database

__all__ = ["create_app"]


def create_app(
    db: Database,
    authority: Authority,
    *,
    clock: Clock = system_clock,
    metrics: Metrics | None = None,
) -> FastAPI:
    """The API over `db`, issuing with `authority`, reading time from `clock`."""
    context = AppContext(db=db, authority=authority, clock=clock, metrics=metrics or Metrics())
    app = FastAPI(
        title="Umbranet controller",
        version=__version__,
        description="Identities, enrollment, services, session tickets and routers.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.umbra = context
    app.include_router(routes_health.router)
    app.include_router(routes_public.router)
    app.include_router(routes_client.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_events.router)
    app.include_router(routes_policy.router)
    app.include_router(routes_jwt.router)
    app.include_router(routes_metrics.router)
    app.include_router(routes_joinkeys.router)
    app.include_router(routes_manage.router)
    app.include_router(routes_mesh.router)
    app.include_router(routes_network.router)
    app.include_router(routes_nat.router)
    install_error_handlers(app, context.metrics)
    app.add_middleware(GuardMiddleware, metrics=context.metrics)
    app.add_middleware(routes_metrics.RequestMetrics, metrics=context.metrics)
    events = context.events
    context.metrics.follow_events(lambda: events.epoch, lambda: events.subscribers)
    return app
