"""The agent's local API: HTTP/1.1 + JSON on a Unix socket only its owner can open.

Small on purpose: one request per connection (``Connection: close``), bodies only with
Content-Length, heads up to 16 KiB, bodies up to 64 KiB, ten seconds to send a request. The
parser (`parse_head`) is a pure function; whatever bytes arrive, the server answers with an
HTTP error that names the reason (``{"error": {"code", "message"}}``), counts it, and keeps
serving everyone else. `LocalApiClient` is what ``umbra status|whois|ping`` use.

The socket is created with umask 0177 and then chmod 0600, inside the 0700 state directory:
whois reveals who is connected to what, which is for the machine's owner only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx

from umbranet.agent.stats import Counters

__all__ = [
    "MAX_BODY",
    "MAX_HEAD",
    "AgentApiError",
    "ApiError",
    "Handler",
    "LocalApiClient",
    "LocalApiServer",
    "Request",
    "parse_head",
    "render",
]

log = logging.getLogger("umbranet.agent")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0
_MAX_HEADERS = 64
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_METHOD = re.compile(r"^[A-Z]{1,16}$")


class ApiError(Exception):
    """A request the API refuses: HTTP `status`, a stable `code` and a human `reason`."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"{status} {code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request: header names are lower case; the query keeps the last value."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_length(self) -> int:
        return int(self.headers.get("content-length", "0"))

    def json(self) -> Any:
        """The body as JSON (an object), or ApiError ``bad_json``."""
        try:
            value = json.loads(self.body or b"{}")
        except ValueError as exc:
            raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ApiError(400, "bad_json", "the body must be a JSON object")
        return value


# A handler answers (status, JSON body) or raises ApiError.
Handler = Callable[[Request], Awaitable[tuple[int, Any]]]


def parse_head(head: bytes) -> Request:
    """Parse a request line and headers (ending in CRLF CRLF); ApiError for anything else."""
    if len(head) > MAX_HEAD:
        raise ApiError(431, "head_too_large", f"request head over {MAX_HEAD} bytes")
    if not head.endswith(b"\r\n\r\n"):
        raise ApiError(400, "incomplete_request", "the request head does not end in CRLF CRLF")
    try:
        text = head[:-4].decode("ascii")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "the request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise ApiError(400, "bad_request", "the request line is not METHOD TARGET VERSION")
    method, target, version = parts
    if not _METHOD.match(method):
        raise ApiError(400, "bad_request", "the method is not an HTTP token")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ApiError(400, "bad_version", "only HTTP/1.0 and HTTP/1.1 are spoken here")
    if not target.startswith("/") or any(c in target for c in "\x00\t\x7f"):
        raise ApiError(400, "bad_request", "the target must be an absolute path")
    headers = _headers(lines[1:])
    path, _, query = target.partition("#")[0].partition("?")
    return Request(method, path, dict(parse_qsl(query, keep_blank_values=True)), headers)


def render(status: int, body: Any) -> bytes:
    """A complete HTTP/1.1 response with a JSON body; the connection closes after it."""
    payload = json.dumps(body, indent=2).encode("utf-8") + b"\n"
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + payload


def error_body(code: str, reason: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": reason}}


class LocalApiServer:
    """Serves `handler` on a Unix socket at `path` (owner-only)."""

    def __init__(self, path: Path, handler: Handler, counters: Counters) -> None:
        self.path = path
        self._handler = handler
        self._counters = counters
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Listen; refuses (ApiError ``already_running``) if another agent answers there."""
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise ApiError(409, "already_running", f"an agent already serves {self.path}")
            self.path.unlink()
        previous = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve_client, str(self.path), limit=MAX_HEAD
            )
        finally:
            os.umask(previous)
        self.path.chmod(0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            response = await self._respond(reader)
            if response is not None:
                writer.write(response)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            request = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT)
        except _Silent:
            return None
        except ApiError as exc:
            self._counters.add(f"api_bad_request.{exc.code}")
            log.info("local API refused a request: %s", exc)
            return render(exc.status, error_body(exc.code, exc.reason))
        except TimeoutError:
            self._counters.add("api_bad_request.timeout")
            return render(408, error_body("timeout", f"no complete request in {READ_TIMEOUT}s"))
        self._counters.add("api_requests")
        try:
            status, body = await self._handler(request)
        except ApiError as exc:
            self._counters.add(f"api_error.{exc.code}")
            return render(exc.status, error_body(exc.code, exc.reason))
        except Exception as exc:
            log.exception("local API handler failed")
            self._counters.add("api_error.internal_error")
            return render(500, error_body("internal_error", type(exc).__name__))
        return render(status, body)


class _Silent(Exception):
    """The client left before sending anything: nothing to answer."""


async def _read_request(reader: asyncio.StreamReader) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _Silent from None
        raise ApiError(400, "incomplete_request", "the connection ended inside the head") from None
    except asyncio.LimitOverrunError:
        raise ApiError(431, "head_too_large", f"request head over {MAX_HEAD} bytes") from None
    request = parse_head(head)
    if "transfer-encoding" in request.headers:
        raise ApiError(501, "chunked_unsupported", "send the body with Content-Length")
    length = request.content_length
    if length > MAX_BODY:
        raise ApiError(413, "body_too_large", f"bodies are limited to {MAX_BODY} bytes")
    if not length:
        return request
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ApiError(400, "incomplete_body", "the connection ended inside the body") from None
    return Request(request.method, request.path, request.query, request.headers, body)


def _headers(lines: list[str]) -> dict[str, str]:
    if len(lines) > _MAX_HEADERS:
        raise ApiError(431, "too_many_headers", f"more than {_MAX_HEADERS} header lines")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise ApiError(400, "bad_header", "a header line is not NAME: VALUE")
        headers[name.lower()] = value.strip(" \t")
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or len(length) > 9):
        raise ApiError(400, "bad_header", "Content-Length is not a number")
    return headers


def _answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


# -- the client ------------------------------------------------------------------------------


class AgentApiError(Exception):
    """The agent refused (``status`` is its HTTP status) or is not running (status 0)."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class LocalApiClient:
    """Calls a running agent through its Unix socket (synchronous: for the CLI)."""

    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self._timeout = timeout

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return self._call("GET", path, params=params)

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        return self._call("POST", path, body=body)

    def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        if not self.socket_path.exists():
            raise AgentApiError("agent_not_running", f"no agent socket at {self.socket_path}", 0)
        transport = httpx.HTTPTransport(uds=str(self.socket_path))
        with httpx.Client(transport=transport, timeout=self._timeout, trust_env=False) as http:
            try:
                response = http.request(
                    method, f"http://umbra-agent{path}", params=params, json=body
                )
            except httpx.TransportError as exc:
                raise AgentApiError(
                    "agent_not_running", f"cannot reach the agent at {self.socket_path}: {exc}", 0
                ) from exc
        try:
            data = response.json()
        except ValueError:
            raise AgentApiError(
                "bad_response", "the agent sent invalid JSON", response.status_code
            ) from None
        if response.is_success:
            return data
        error = data.get("error", {}) if isinstance(data, dict) else {}
        raise AgentApiError(
            str(error.get("code", f"http_{response.status_code}")),
            str(error.get("message", response.reason_phrase)),
            response.status_code,
        )
