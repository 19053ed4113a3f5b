"""The controller client's transport: its error type, HTTP requests and their answers, and
failing over between controller replicas.

Every error the controller reports, and every transport failure, becomes
`ControllerError(code, message, status)`; a malformed answer becomes ``bad_response`` in one
place (`malformed_answers_are_bad_responses`, applied to the client class).

Failover (docs/ha.md). A network may run several controller replicas; `Failover` sends each
request to the replica that last answered and, when it cannot be reached or answers 5xx,
tries the next one it knows, each at most once per request. Which replicas exist is learned
from the controllers themselves (the event stream's ``hello`` and ``GET /v1/controllers``
list the live ones), plus the identity file's URL and ``UMBRA_CONTROLLERS`` (comma-separated
URLs: how a process that starts while its identity's controller is down finds the others).
What was learned, and which replica failed lately, is kept per trust domain for the whole
process (`directory`), so every client of the process — new ones included — skips a dead
replica at once.

Repeating a request must not do a change twice. A request that never reached a server
(connection refused, TLS failure) and a 502/503/504 answer (the replica could not reach the
database: its transaction rolled back) move on for every method. A request that may have
been processed (the connection broke after sending, or a 500) moves on only when repeating
it is harmless: GET, PUT and DELETE, and the POSTs in `REPEATABLE_POSTS`; otherwise the
error is raised (an admin re-runs "create identity" and sees "exists" rather than having it
run twice unseen).
"""

from __future__ import annotations

import functools
import inspect
import json as json_module
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import httpx

from umbranet.client.enrollment_tls import certificate_untrusted
from umbranet.pki import TrustBundle

__all__ = [
    "REPEATABLE_POSTS",
    "ControllerDirectory",
    "ControllerError",
    "Failover",
    "directory",
    "error_of",
    "http_client",
    "json_object",
    "malformed_answers_are_bad_responses",
    "mark_controller_sockets",
    "request",
    "server_context",
]


_P = ParamSpec("_P")
_T = TypeVar("_T")
_C = TypeVar("_C")


log = logging.getLogger("umbranet.client")


class ControllerError(Exception):
    """The controller refused (``status`` is its HTTP status) or could not be reached (0).

    `sent` is False when the request cannot have reached any server (the connection was
    never made), so repeating it elsewhere is safe whatever it does.
    """

    def __init__(self, code: str, message: str, status: int, *, sent: bool = True) -> None:
        super().__init__(code, message, status)
        self.code = code
        self.message = message
        self.status = status
        self.sent = sent

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


class _SocketMark:
    value: int | None = None


_socket_mark = _SocketMark()


def mark_controller_sockets(mark: int | None) -> None:
    """Mark (SO_MARK) every socket a controller client of this process opens from now on.

    A device using an exit node sends every unmarked packet into its tunnel. A rule keeps the
    addresses of its identity's controller URL out, but the replicas it learns later for
    failover live at addresses no rule names: marking the connections themselves keeps any
    replica reachable. It is process-wide, like `directory`, because every client the agent
    makes (its own, its SDK context's, a renewal's, NAT traversal's) must follow it.
    """
    _socket_mark.value = mark


def http_client(
    base_url: str,
    verify: ssl.SSLContext | bool,
    timeout: float,
    transport: httpx.AsyncBaseTransport | None,
) -> httpx.AsyncClient:
    if transport is None and _socket_mark.value is not None:
        mark = (socket.SOL_SOCKET, socket.SO_MARK, _socket_mark.value)
        transport = httpx.AsyncHTTPTransport(verify=verify, socket_options=[mark])
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
        raise transport_error(http, exc) from exc
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


def transport_error(http: httpx.AsyncClient, exc: httpx.TransportError) -> ControllerError:
    """`exc` as ``controller_untrusted`` or ``unreachable``; `sent` says whether the request
    may have reached the server."""
    if certificate_untrusted(exc):
        return ControllerError(
            "controller_untrusted",
            f"the server at {http.base_url} is not the controller its CA vouches for: {exc}",
            0,
            sent=False,
        )
    not_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return ControllerError(
        "unreachable",
        f"cannot reach the controller at {http.base_url}: {exc}",
        0,
        sent=not not_sent,
    )


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


# -- failover between replicas ------------------------------------------------------------

REPEATABLE_POSTS = frozenset(
    {
        "/v1/tickets",
        "/v1/recheck",
        "/v1/renew",
        "/v1/posture",
        "/v1/routers/me/state",
        "/v1/policy/test",
        "/v1/policy/explain",
        "/v1/jwt-svid",
    }
)
"""POSTs whose repetition is harmless (a second ticket, a second certificate, a re-check)."""
_REPEATABLE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
_UNAVAILABLE = frozenset({502, 503, 504})
MAX_URLS = 32
ENV_CONTROLLERS = "UMBRA_CONTROLLERS"
DOWN_SECONDS = 60.0
"""How long a replica that failed is tried last."""


def may_fail_over(error: ControllerError, method: str, path: str) -> bool:
    """Whether `error` from one replica lets the same request go to the next (module doc)."""
    if not error.sent or error.status in _UNAVAILABLE:
        return True
    if error.status == 0 or error.status >= 500:
        return method in _REPEATABLE_METHODS or (
            method == "POST" and path.split("?", 1)[0] in REPEATABLE_POSTS
        )
    return False


class ControllerDirectory:
    """The controller URLs known per trust domain, and which failed lately.

    A client tries its own identity's URL first (so clients spread over the replicas that
    enrolled them), then the replicas the controllers listed, then ``UMBRA_CONTROLLERS``;
    a URL that failed within `DOWN_SECONDS` goes to the back, so every client of the process
    (new ones included) skips a dead replica without waiting for it again. Shared by the
    whole process (`directory`); time is injected.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._urls: dict[str, list[str]] = {}
        self._down: dict[str, float] = {}  # URL -> when it failed
        self.failovers = 0

    def candidates(self, network: str, primary: str) -> list[str]:
        """Every URL to try for `network`, in order (the identity's `primary` included)."""
        env = [u.strip() for u in os.environ.get(ENV_CONTROLLERS, "").split(",")]
        urls = _unique([primary, *self._urls.get(network, []), *env])[:MAX_URLS]
        since = self._clock() - DOWN_SECONDS

        def failed_at(url: str) -> float:
            at = self._down.get(url, -1.0)
            return at if at >= since else -1.0

        # Stable: healthy ones keep their order; the one that failed longest ago comes next.
        return sorted(urls, key=failed_at)

    def learn(self, network: str, urls: Iterable[object]) -> None:
        """Take the live replicas a controller listed (https URLs only)."""
        listed = [u for u in urls if isinstance(u, str) and u.lower().startswith("https://")]
        if listed:
            self._urls[network] = _unique(listed)[:MAX_URLS]

    def worked(self, network: str, url: str) -> None:
        self._down.pop(url.rstrip("/"), None)

    def failed(self, network: str, url: str) -> None:
        self._down[url.rstrip("/")] = self._clock()
        while len(self._down) > 4 * MAX_URLS:
            del self._down[next(iter(self._down))]
        self.failovers += 1

    def forget(self) -> None:
        """Tests: start from nothing."""
        self._urls.clear()
        self._down.clear()
        self.failovers = 0


directory = ControllerDirectory()
"""The process's one directory."""


class Failover:
    """HTTP clients to each known replica of `network`, used in `directory` order.

    `make(url)` builds the client for one URL (same TLS context, another base URL): the
    server's certificate is checked against the bundle with that URL's host name.
    """

    def __init__(
        self, network: str, primary: str, make: Callable[[str], httpx.AsyncClient]
    ) -> None:
        self.network = network
        self.primary = primary
        self._make = make
        self._clients: dict[str, httpx.AsyncClient] = {}
        self.streaming: str | None = None

    def client(self, url: str) -> httpx.AsyncClient:
        found = self._clients.get(url)
        if found is None:
            found = self._clients[url] = self._make(url)
        return found

    async def request(self, method: str, path: str, *, json: Any = None) -> Any:
        """`request` on the first replica that answers (see the module doc)."""
        return await self.attempt(lambda http: request(http, method, path, json=json), method, path)

    async def attempt(
        self, call: Callable[[httpx.AsyncClient], Awaitable[_T]], method: str, path: str
    ) -> _T:
        """`call(client)` per replica until one succeeds or an error must not move on."""
        last: ControllerError | None = None
        for url in directory.candidates(self.network, self.primary):
            try:
                result = await call(self.client(url))
            except ControllerError as exc:
                if not may_fail_over(exc, method, path):
                    raise
                log.info("controller %s: %s; trying the next replica", url, exc.code)
                directory.failed(self.network, url)
                last = exc
                continue
            directory.worked(self.network, url)
            return result
        assert last is not None  # there is always at least the primary URL
        raise last

    @asynccontextmanager
    async def stream(self, path: str, timeout: httpx.Timeout) -> AsyncIterator[httpx.Response]:
        """A streaming GET on the first replica that accepts it; the caller reads it. When
        the stream breaks later, the caller calls `broke` and opens a new one."""
        last: ControllerError | None = None
        self.streaming = None
        for url in directory.candidates(self.network, self.primary):
            http = self.client(url)
            try:
                async with http.stream("GET", path, timeout=timeout) as response:
                    if not response.is_success:
                        await response.aread()
                        error = error_of(response)
                        if not may_fail_over(error, "GET", path):
                            raise error
                        directory.failed(self.network, url)
                        last = error
                        continue
                    directory.worked(self.network, url)
                    self.streaming = url
                    yield response
                    return
            except httpx.TransportError as exc:
                if self.streaming == url:
                    raise  # broke after it opened: the caller's to report (`broke`)
                directory.failed(self.network, url)
                last = transport_error(http, exc)
        assert last is not None
        raise last

    def broke(self) -> None:
        """The stream opened by `stream` broke: its replica goes to the back of the line."""
        if self.streaming is not None:
            directory.failed(self.network, self.streaming)
            self.streaming = None

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for http in clients:
            await http.aclose()


def _unique(urls: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(u.rstrip("/") for u in urls if u))
