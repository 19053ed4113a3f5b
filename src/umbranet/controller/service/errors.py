"""Errors the use cases raise: a stable machine ``code``, a human ``message``, an HTTP status.

The API layer turns them into ``{"error": {"code", "message"}}`` responses unchanged; the
status lives here because each failure has exactly one meaning for a client (bad input,
not who you claim, not allowed, not there, already done).
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Conflict",
    "ControllerServiceError",
    "Forbidden",
    "NotFound",
    "Unauthenticated",
]


class ControllerServiceError(Exception):
    """Base: the request cannot be served as asked."""

    status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadRequest(ControllerServiceError):
    status = 400


class Unauthenticated(ControllerServiceError):
    status = 401


class Forbidden(ControllerServiceError):
    status = 403


class NotFound(ControllerServiceError):
    status = 404


class Conflict(ControllerServiceError):
    status = 409
