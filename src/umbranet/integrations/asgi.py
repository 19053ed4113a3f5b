"""Serve an ASGI app dark: every overlay stream to the service is an HTTP/1.1 connection.

The app sees an ordinary `http` scope plus who called, as the overlay proved it:

    scope["extensions"]["umbranet"] == {"peer": {"name", "spiffe_id", "attributes"},
                                        "service": "billing"}
    scope["client"] == (peer SPIFFE ID, 0)

so it can authorize by identity with no login of its own. WebSocket upgrades reach the app
as ``websocket`` scopes with the same identity (`asgi_ws`). Lifespan startup runs before the
service is bound and shutdown after the last connection ended; `lifespan="auto"` tolerates
apps that do not speak the lifespan protocol.

    async with Context.from_file("billing.json") as ctx:
        await serve_asgi(ctx, "billing", app)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import h11

from umbranet.integrations.asgi_ws import WebSocketSession
from umbranet.integrations.serving import (
    Exchange,
    OverlayHttpServer,
    RequestAborted,
    _HttpConnection,
)
from umbranet.sdk.context import Context
from umbranet.sdk.errors import UmbraError

__all__ = ["ASGIApp", "AsgiServer", "LifespanError", "serve_asgi"]

log = logging.getLogger("umbranet.integrations")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LifespanMode = Literal["auto", "on", "off"]

_ASGI = {"version": "3.0", "spec_version": "2.4"}


class LifespanError(UmbraError):
    """The app failed its lifespan startup (code `lifespan_failed`)."""


async def serve_asgi(context: Context, service: str, app: ASGIApp, **options: Any) -> None:
    """Serve `app` as `service` until cancelled (options: see AsgiServer)."""
    await AsgiServer(context, service, app, **options).serve_forever()


class AsgiServer(OverlayHttpServer):
    """An ASGI 3 server whose only transport is the overlay.

    `lifespan`: "auto" (run it if the app supports it), "on" (a failure is fatal), "off".
    `root_path` is passed to the app as the scope's root_path.
    """

    def __init__(
        self,
        context: Context,
        service: str,
        app: ASGIApp,
        *,
        lifespan: LifespanMode = "auto",
        root_path: str = "",
        **options: Any,
    ) -> None:
        super().__init__(context, service, **options)
        self.app = app
        self.root_path = root_path
        self._lifespan = _Lifespan(app, lifespan)

    async def startup(self) -> None:
        await self._lifespan.startup()

    async def shutdown(self) -> None:
        await self._lifespan.shutdown()

    async def handle(self, exchange: Exchange) -> None:
        scope = self._scope(exchange.request, exchange.peer)
        await self.app(scope, _receiver(exchange), _sender(exchange))

    async def handle_websocket(self, connection: _HttpConnection, request: h11.Request) -> bool:
        session = WebSocketSession(connection, request)
        problem = session.handshake_error()
        if problem is not None:
            await connection.reject(400, "bad_websocket_handshake", problem)
            return True
        scope = self._scope(request, connection.peer)
        scope.update(type="websocket", scheme="ws", subprotocols=session.subprotocols)
        del scope["method"]
        try:
            await self.app(scope, session.receive, session.send)
        except Exception:
            self.count("app_errors")
            log.exception("service=%s websocket application error", self.service)
            await session.finish()
            return True
        await session.finish()
        return True

    def _scope(self, request: h11.Request, peer: dict[str, Any]) -> Scope:
        target = bytes(request.target)
        if not target.startswith(b"/") and b"://" in target:
            parts = urlsplit(target)  # absolute-form, as sent to proxies
            raw_path, query = parts.path or b"/", parts.query
        else:
            raw_path, _, query = target.partition(b"?")
        return {
            "type": "http",
            "asgi": dict(_ASGI),
            "http_version": request.http_version.decode("ascii"),
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": self.root_path,
            "headers": [(bytes(name), bytes(value)) for name, value in request.headers],
            "client": (peer["spiffe_id"], 0),
            "server": (self.service, 80),
            "state": dict(self._lifespan.state),
            "extensions": {"umbranet": {"peer": peer, "service": self.service}},
        }


def _receiver(exchange: Exchange) -> Receive:
    async def receive() -> Message:
        if exchange.body_complete or exchange.aborted is not None:
            await exchange.wait_finished()
            return {"type": "http.disconnect"}
        try:
            body, more = await exchange.receive()
        except RequestAborted:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": body, "more_body": more}

    return receive


def _sender(exchange: Exchange) -> Send:
    async def send(message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            exchange.start(int(message["status"]), headers)
        elif kind == "http.response.body":
            body = bytes(message.get("body", b""))
            await exchange.write(body, end=not message.get("more_body", False))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for an http scope")

    return send


class _Lifespan:
    """The lifespan protocol from the server's side: one task running the app's lifespan."""

    def __init__(self, app: ASGIApp, mode: LifespanMode) -> None:
        self._app = app
        self._mode = mode
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._startup: asyncio.Future[Message | None] | None = None
        self._shutdown: asyncio.Future[Message | None] | None = None
        self._supported = False

    async def startup(self) -> None:
        if self._mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._startup = loop.create_future()
        self._shutdown = loop.create_future()
        self._task = loop.create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        try:
            message = await asyncio.shield(self._startup)
        except Exception as exc:
            if self._mode == "on":
                raise LifespanError("lifespan_failed", f"lifespan startup raised {exc!r}") from exc
            log.info("the app does not support the ASGI lifespan protocol; continuing without")
            return
        if message is None:
            if self._mode == "on":
                raise LifespanError("lifespan_failed", "the app ended its lifespan at startup")
            return
        if message["type"] == "lifespan.startup.failed":
            raise LifespanError("lifespan_failed", str(message.get("message", "")))
        self._supported = True

    async def shutdown(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self._supported and self._shutdown is not None:
            await self._inbox.put({"type": "lifespan.shutdown"})
            try:
                message = await asyncio.wait_for(asyncio.shield(self._shutdown), 30)
            except Exception as exc:
                log.error("lifespan shutdown failed: %r", exc)
            else:
                if message is not None and message["type"] == "lifespan.shutdown.failed":
                    log.error("lifespan shutdown failed: %s", message.get("message", ""))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": dict(_ASGI), "state": self.state}
        try:
            await self._app(scope, self._inbox.get, self._send)
        except Exception as exc:
            for future in (self._startup, self._shutdown):
                if future is not None and not future.done():
                    future.set_exception(exc)
                    return
            log.error("lifespan task raised after shutdown", exc_info=exc)
        finally:
            for future in (self._startup, self._shutdown):
                if future is not None and not future.done():
                    future.set_result(None)
            for future in (self._startup, self._shutdown):
                if future is not None and future.done() and not future.cancelled():
                    future.exception()  # mark retrieved: no "never retrieved" warnings

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind.startswith("lifespan.startup.") and self._startup and not self._startup.done():
            self._startup.set_result(message)
        elif kind.startswith("lifespan.shutdown.") and self._shutdown and not self._shutdown.done():
            self._shutdown.set_result(message)
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")
