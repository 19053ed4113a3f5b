"""What the controller client returns: the controller's own response models (`umbranet.schema`)
under the names the client's API has always used.

The client parses every answer with these classes, so a field the controller adds or renames
is written once; a malformed answer fails validation (a `ValueError`), which the client turns
into ``ControllerError("bad_response")`` in its one place for that.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from umbranet.schema import IdentityCreatedOut as CreatedIdentity
from umbranet.schema import IdentityOut as IdentityInfo
from umbranet.schema import Intercept
from umbranet.schema import JwtSvidOut as JwtSvidGrant
from umbranet.schema import MeOut as MeInfo
from umbranet.schema import RouterAddressOut as RouterAddress
from umbranet.schema import RouterCreatedOut as CreatedRouter
from umbranet.schema import RouterOut as RouterInfo
from umbranet.schema import ServiceActionsOut as ServiceAccess
from umbranet.schema import ServiceOut as ServiceInfo
from umbranet.schema import TicketOut as TicketGrant

__all__ = [
    "CreatedIdentity",
    "CreatedRouter",
    "IdentityInfo",
    "Intercept",
    "JwtSvidGrant",
    "MeInfo",
    "RouterAddress",
    "RouterInfo",
    "ServiceAccess",
    "ServiceInfo",
    "TicketGrant",
    "parse",
    "parse_list",
]

_M = TypeVar("_M", bound=BaseModel)


def parse(model: type[_M], data: Any) -> _M:
    """One answer as `model`; a malformed one raises pydantic's `ValidationError`."""
    return model.model_validate(data)


def parse_list(model: type[_M], data: Any) -> list[_M]:
    """A JSON array of `model`; anything else raises (`TypeError` or `ValidationError`)."""
    if not isinstance(data, list):
        raise TypeError(f"expected a list of {model.__name__}, got {type(data).__name__}")
    return [model.model_validate(item) for item in data]
