"""`GET /healthz` (the process answers) and `GET /readyz` (it can serve), for load balancers
and orchestrators in front of replicas; neither needs a client certificate.

Ready means: the database answers, its schema is the revision this code expects (a replica
left on older code behind a newer schema must not take traffic), the signing keys are
loaded, and, with replicas on PostgreSQL, the epoch listener is connected (a replica that
cannot hear other replicas' revocations must not serve event streams). A failing check is
503 with the check's name, so a balancer moves clients to another replica.
"""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from umbranet.controller.api.deps import Ctx
from umbranet.controller.store import HEAD_REVISION

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz")
def readyz(ctx: Ctx) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with ctx.db.engine.connect() as connection:
            version = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            revision = version.scalar()
        checks["database"] = "ok"
        checks["schema"] = "ok" if revision == HEAD_REVISION else f"at {revision}"
    except sa.exc.SQLAlchemyError:
        checks["database"] = "unreachable"
    checks["keys"] = "ok" if ctx.authority.bundle.ca_pem else "missing"
    if ctx.listener is not None:
        checks["epoch_listener"] = "ok" if ctx.listener.connected.is_set() else "disconnected"
    ready = all(value == "ok" for value in checks.values())
    if not ready:
        ctx.metrics.api_errors.labels(code="not_ready").inc()
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
