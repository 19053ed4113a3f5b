"""What the groups of `ControllerClient` calls share: the one request method they all go
through, and the helpers that shape paths and answers.

`ControllerClient` is one class for its users; its calls are grouped by who may make them
(`admin_calls`, `mesh_calls`) so each file stays readable. A group is a mixin over `Calls`:
it only builds the request and parses the answer; `ControllerClient._call` sends it (with
failover across replicas and its error mapping). Each group is decorated with
`malformed_answers_are_bad_responses` itself: the decorator wraps a class's own methods.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from umbranet.client.transport import ControllerError

__all__ = ["Calls", "json_dict", "segment"]


class Calls:
    """The request method the call groups build on (`ControllerClient` provides it)."""

    _timeout: float

    async def _call(self, method: str, path: str, *, json: Any = None) -> Any:
        raise NotImplementedError


def segment(name: str) -> str:
    """A name as one URL path segment (names are restricted, but never trust that here)."""
    return quote(name, safe="")


def json_dict(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ControllerError("bad_response", "the controller answered with a non-object", 0)
    return {str(k): v for k, v in data.items()}
