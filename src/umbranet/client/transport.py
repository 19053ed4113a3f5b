"""The controller client's transport: its error type, HTTP requests and their answers.

Every error the controller reports, and every transport failure, becomes
`ControllerError(code, message, status)`; a malformed answer becomes ``bad_response`` in one
place (`malformed_answers_are_bad_responses`, applied to the client class).
"""

from __future__ import annotations

import functools
import inspect
import json as json_module
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import httpx

from umbranet.client.enrollment_tls import certificate_untrusted
from umbranet.pki import TrustBundle

__all__ = [
    "ControllerError",
    "error_of",
    "http_client",
    "json_object",
    "malformed_answers_are_bad_responses",
    "request",
    "server_context",
]


_P = ParamSpec("_P")
_T = TypeVar("_T")
_C = TypeVar("_C")


class ControllerError(Exception):
    """The controller refused (``status`` is its HTTP status) or could not be reached (0)."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(code, message, status)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def malformed_answers_are_bad_responses(cls: type[_C]) -> type[_C]:
    """The one place a malformed answer is mapped: every public coroutine of the client that
    meets a missing field or a value of the wrong type while reading an answer raises
    ``ControllerError("bad_response")``, never a bare KeyError or TypeError."""
    for name, method in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(method):
            setattr(cls, name, _checked_answer(method))
    return cls


def _checked_answer(method: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    @functools.wraps(method)
    async def checked(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(*args, **kwargs)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ControllerError(
                "bad_response", f"the controller's answer is malformed ({exc!r})", 0
            ) from exc

    return checked


def http_client(
    base_url: str,
    verify: ssl.SSLContext | bool,
    timeout: float,
    transport: httpx.AsyncBaseTransport | None,
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        verify=verify,
        timeout=timeout,
        transport=transport,
        trust_env=False,
        follow_redirects=False,
    )


def server_context(bundle: TrustBundle) -> ssl.SSLContext:
    """Verify the controller against the bundle's CA, host name included."""
    context = ssl.create_default_context(cadata=bundle.ca_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def request(http: httpx.AsyncClient, method: str, path: str, *, json: Any = None) -> Any:
    try:
        response = await http.request(method, path, json=json)
    except httpx.TransportError as exc:
        if certificate_untrusted(exc):
            raise ControllerError(
                "controller_untrusted",
                f"the server at {http.base_url} is not the controller its CA vouches for: {exc}",
                0,
            ) from exc
        raise ControllerError(
            "unreachable", f"cannot reach the controller at {http.base_url}: {exc}", 0
        ) from exc
    if response.is_success:
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ControllerError(
                "bad_response", "the controller sent invalid JSON", response.status_code
            ) from exc
    raise error_of(response)


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json_module.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def error_of(response: httpx.Response) -> ControllerError:
    try:
        body = response.json()
        error = body["error"]
        return ControllerError(str(error["code"]), str(error["message"]), response.status_code)
    except (ValueError, KeyError, TypeError):
        text = response.text[:200].strip() or response.reason_phrase
        return ControllerError(f"http_{response.status_code}", text, response.status_code)
