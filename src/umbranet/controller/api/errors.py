"""Every failure becomes ``{"error": {"code", "message"}}``, is logged once and counted.

Handlers cover the use cases' errors, request validation (malformed JSON is 400
``malformed_json``, a well-formed body of the wrong shape is 422 ``invalid_request``), HTTP
errors from routing (404 ``not_found``, 405 ``method_not_allowed``), a database that cannot
be reached (503 ``database_unavailable`` with ``Retry-After``: a client may try another
replica, docs/ha.md) and anything unexpected (500 ``internal_error``, logged with its
traceback). Messages never echo request bodies.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from umbranet.controller.logfmt import safe
from umbranet.controller.metrics import Metrics
from umbranet.controller.service import ControllerServiceError

__all__ = ["error_response", "install_error_handlers"]

log = logging.getLogger("umbranet.controller.api")

_HTTP_CODES = {
    # Our routes raise ControllerServiceError; a bare 400 comes from FastAPI's body reader
    # (e.g. bytes that are not UTF-8), i.e. a body that is not JSON.
    400: "malformed_json",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def refuse(request: Request, status: int, code: str, message: str) -> JSONResponse:
        metrics.api_errors.labels(code=code).inc()
        log.warning(
            "request refused method=%s path=%s status=%d code=%s reason=%s",
            safe(request.method),
            safe(request.url.path),
            status,
            code,
            safe(message),
        )
        return error_response(status, code, message)

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ControllerServiceError)
        return refuse(request, exc.status, exc.code, exc.message)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return refuse(request, 400, "malformed_json", "the request body is not valid JSON")
        return refuse(request, 422, "invalid_request", _describe(errors))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = "the request body is not valid JSON" if code == "malformed_json" else exc.detail
        response = refuse(request, exc.status_code, code, str(message))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_database_down(request: Request, exc: Exception) -> JSONResponse:
        # Connection-level failures only (OperationalError: refused, reset, failover);
        # a constraint or programming error stays a 500 with its traceback.
        response = refuse(request, 503, "database_unavailable", "the database is unreachable")
        response.headers["Retry-After"] = "1"
        return response

    app.add_exception_handler(ControllerServiceError, on_service_error)
    app.add_exception_handler(sa.exc.OperationalError, on_database_down)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


def _describe(errors: list[Any]) -> str:
    """Where and what, without the offending input (which may hold a token or a key)."""
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)
