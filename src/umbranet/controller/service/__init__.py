"""Use cases of the controller: pure-ish functions over a `Store`, an `Authority` and `now`.

They never read the clock or touch HTTP; the API layer passes the request's time and maps
`ControllerServiceError` to JSON errors.
"""

from umbranet.controller.service.authority import Authority
from umbranet.controller.service.errors import (
    BadRequest,
    Conflict,
    ControllerServiceError,
    Forbidden,
    NotFound,
    Unauthenticated,
)

__all__ = [
    "Authority",
    "BadRequest",
    "Conflict",
    "ControllerServiceError",
    "Forbidden",
    "NotFound",
    "Unauthenticated",
]
