"""The HTTP/1.1 server core under the ASGI and WSGI adapters: h11 over overlay streams.

A dark web app has no listening socket: the server hosts a service through the SDK's
listener and treats every incoming Stream as one HTTP connection. h11 does the parsing and
framing (keep-alive, chunked bodies, 100-continue); this module owns the loop around it and
the rules for when things go wrong:

- a malformed request gets a 4xx with a reason (JSON error body), is counted, and only that
  stream closes;
- an application that raises gets a 500 if no response head went out yet, else its stream is
  reset so the client cannot mistake a cut body for a whole one; either way it is logged and
  counted, and the connection closes;
- a client that goes away mid-request is counted, not logged as an application error.

The adapters (`asgi.AsgiServer`, `wsgi.WsgiServer`) implement `handle(exchange)`; each
Exchange is one request and its response.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import h11

from umbranet.integrations.asgi_ws import is_websocket_request
from umbranet.proto.e2e import PeerIdentity
from umbranet.sdk.context import Context
from umbranet.sdk.errors import UmbraError
from umbranet.sdk.listener import Listener
from umbranet.sdk.stream import Stream

__all__ = [
    "Exchange",
    "OverlayHttpServer",
    "RequestAborted",
    "import_app",
    "peer_info",
]

log = logging.getLogger("umbranet.integrations")

Headers = list[tuple[bytes, bytes]]

# Unread request body we are willing to read and discard to keep a connection alive.
_DRAIN_LIMIT = 64 * 1024
_READ_SIZE = 65536


def peer_info(peer: PeerIdentity) -> dict[str, Any]:
    """The dialer's proven identity as plain data, for the ASGI scope and the WSGI environ."""
    return {"name": peer.name, "spiffe_id": peer.spiffe_id, "attributes": list(peer.attributes)}


def import_app(spec: str) -> Any:
    """The object named by ``module:attribute`` (attribute may be dotted), e.g. ``main:app``.

    Raises UmbraError(`app_not_found`) naming what was missing.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UmbraError("app_not_found", f"{spec!r} is not of the form module:attribute")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UmbraError("app_not_found", f"no module named {module_name!r}") from exc
        raise
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise UmbraError(
                "app_not_found", f"module {module_name!r} has no attribute {attribute!r}"
            ) from exc
    return target


class RequestAborted(ConnectionError):
    """The request cannot be read on: the client left, or its body is malformed.

    `status` is the HTTP status to answer with (None when the client is gone).
    """

    def __init__(self, reason: str, status: int | None = None, code: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.code = code


class OverlayHttpServer:
    """Serve HTTP/1.1 on every stream of `service`; subclasses implement `handle`.

    `async with server:` binds (startup hooks first) and serves in the background until the
    block ends; `serve_forever()` does the same until cancelled. Opens no port.
    """

    def __init__(
        self,
        context: Context,
        service: str,
        *,
        keep_alive_timeout: float = 30.0,
        write_timeout: float = 60.0,
        max_head_size: int = 16384,
    ) -> None:
        self.context = context
        self.service = service
        self.keep_alive_timeout = keep_alive_timeout
        self.write_timeout = write_timeout
        self.max_head_size = max_head_size
        self.counters: dict[str, int] = {}
        self._listener: Listener | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the startup hook, then bind the service (returns once bound)."""
        await self.startup()
        try:
            self._listener = await self.context.listen(self.service).start()
        except BaseException:
            await self.shutdown()
            raise
        self._accepting = asyncio.get_running_loop().create_task(self._accept_forever())

    async def stop(self) -> None:
        """Unbind, end every connection, then run the shutdown hook."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.shutdown()

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        async with self:
            await asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> OverlayHttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def statistics(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "live_connections": len(self._connections),
            "counters": dict(self.counters),
        }

    # -- for subclasses ---------------------------------------------------------------------

    async def startup(self) -> None:
        """Before binding (ASGI lifespan startup)."""

    async def shutdown(self) -> None:
        """After the last connection ended (ASGI lifespan shutdown)."""

    async def handle(self, exchange: Exchange) -> None:
        """Answer one request through `exchange`."""
        raise NotImplementedError

    async def handle_websocket(self, connection: _HttpConnection, request: h11.Request) -> bool:
        """Serve a WebSocket upgrade; False (the default) serves it as a plain request."""
        return False

    def count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    # -- internals ------------------------------------------------------------------------

    async def _accept_forever(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        async for stream in self._listener:
            task = loop.create_task(_HttpConnection(self, stream).serve())
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)


class Exchange:
    """One request and its response on an HTTP connection.

    Request side: `request` (h11.Request), `peer`, `receive()` for the body. Response side:
    `start(status, headers)` records the head; `write(data, end=...)` sends it with the first
    body bytes (adding Content-Length when the whole body comes in one write).
    """

    def __init__(self, connection: _HttpConnection, request: h11.Request) -> None:
        self._connection = connection
        self.request = request
        self.peer = connection.peer
        self.service = connection.server.service
        self._body_done = False
        self._head: tuple[int, Headers, bytes] | None = None
        self.head_sent = False
        self.complete = False
        self.aborted: RequestAborted | None = None
        self._finished = asyncio.Event()

    @property
    def body_complete(self) -> bool:
        return self._body_done

    async def receive(self) -> tuple[bytes, bool]:
        """The next piece of the request body and whether more follows; RequestAborted if
        the client left or the body is malformed."""
        if self.aborted is not None:
            raise self.aborted
        if self._body_done:
            return b"", False
        connection = self._connection
        if connection.h11.they_are_waiting_for_100_continue:
            await connection.send(h11.InformationalResponse(status_code=100, headers=[]))
        try:
            event = await connection.next_event()
        except h11.RemoteProtocolError as exc:
            self.aborted = RequestAborted(_reason(exc), exc.error_status_hint, "bad_request")
            raise self.aborted from exc
        except ConnectionError as exc:
            self.aborted = RequestAborted("the client went away")
            raise self.aborted from exc
        if isinstance(event, h11.Data):
            return bytes(event.data), True
        if isinstance(event, h11.EndOfMessage):
            self._body_done = True
            return b"", False
        self.aborted = RequestAborted("the client closed the connection mid-request")
        raise self.aborted

    def start(self, status: int, headers: Headers, reason: bytes = b"") -> None:
        """Record the response head; it goes out with the first `write`."""
        if self._head is not None:
            raise RuntimeError("the response was already started")
        if not reason:
            with contextlib.suppress(ValueError):
                reason = HTTPStatus(status).phrase.encode()
        self._head = (status, list(headers), reason)

    def replace_head(self) -> None:
        """Forget a recorded head not yet sent (WSGI start_response with exc_info)."""
        if self.head_sent:
            raise RuntimeError("the response head was already sent")
        self._head = None

    @property
    def started(self) -> bool:
        return self._head is not None

    async def write(self, data: bytes, *, end: bool = False) -> None:
        """Send body bytes (after the head, if not yet sent); `end` finishes the response."""
        if self.complete:
            raise RuntimeError("the response is already complete")
        if self._head is None:
            raise RuntimeError("response body before the response head")
        if self.aborted is not None and not self.head_sent:
            # The request was malformed or its client left: whatever the app made of it
            # (often a framework's 500), the answer is the server's 400 or nothing.
            raise self.aborted
        connection = self._connection
        status, headers, reason = self._head
        bodyless = self.request.method == b"HEAD" or status in (204, 304) or status < 200
        if not self.head_sent:
            if end and not bodyless and not _has_framing(headers):
                headers.append((b"content-length", str(len(data)).encode()))
            response = h11.Response(status_code=status, headers=headers, reason=reason)
            await connection.send(response)
            self.head_sent = True
        if data and not bodyless:
            await connection.send(h11.Data(data=data))
        if end:
            await connection.send(h11.EndOfMessage())
            self.complete = True
            self._finished.set()

    async def wait_finished(self) -> None:
        """Until the response is complete or the exchange ended otherwise."""
        await self._finished.wait()

    def finish(self) -> None:
        self._finished.set()


class _HttpConnection:
    """The request loop on one stream."""

    def __init__(self, server: OverlayHttpServer, stream: Stream) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer_info(stream.peer)
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_head_size)

    async def serve(self) -> None:
        server, stream = self.server, self.stream
        server.count("connections")
        try:
            while await self._one_request():
                self.h11.start_next_cycle()
        except (ConnectionError, asyncio.IncompleteReadError):
            server.count("disconnects")
        except h11.ProtocolError as exc:
            server.count("protocol_errors")
            log.info("service=%s http connection ended: %s", server.service, type(exc).__name__)
        finally:
            # End our direction; the dialer's EOF then ends the circuit. (Not Stream.close:
            # it recurses once the peer's EOF arrives, see the integrations report.)
            stream.write_eof()

    async def _one_request(self) -> bool:
        """Serve one request; True if the connection may carry another."""
        server = self.server
        try:
            async with asyncio.timeout(server.keep_alive_timeout):
                event = await self.next_event()
        except TimeoutError:
            server.count("idle_timeouts")
            return False
        except h11.RemoteProtocolError as exc:
            await self.reject(exc.error_status_hint, "bad_request", _reason(exc))
            return False
        if not isinstance(event, h11.Request):
            return False  # the client closed its keep-alive connection
        if _head_size(event) > server.max_head_size:
            # h11 bounds only heads that arrive in pieces; one that came whole is checked here.
            limit = server.max_head_size
            await self.reject(431, "header_too_large", f"request head over {limit} bytes")
            return False
        server.count("requests")
        if is_websocket_request(event) and await server.handle_websocket(self, event):
            return False  # a WebSocket owns the stream to its end
        exchange = Exchange(self, event)
        try:
            await server.handle(exchange)
        except Exception as exc:
            return await self._failed(exchange, exc)
        finally:
            exchange.finish()
        if exchange.aborted is not None and not exchange.complete:
            return await self._failed(exchange, exchange.aborted)
        if not exchange.complete:
            if self.stream.is_closing():
                server.count("disconnects")
                return False
            if exchange.head_sent:
                return await self._failed(exchange, RuntimeError("incomplete response"))
            server.count("app_errors")
            log.error("service=%s application returned without a response", server.service)
            await self.reject(500, "no_response", "the application sent no response")
            return False
        return await self._finish_request_body()

    async def _failed(self, exchange: Exchange, exc: BaseException) -> bool:
        server = self.server
        aborted = exchange.aborted
        if aborted is not None:
            # Whatever the app raised, it raised because the request could not be read.
            if aborted.status is None:
                server.count("disconnects")
                self.stream.abort("the client went away")
            elif exchange.complete:
                server.count("bad_requests")  # the app answered already; just close
            else:
                await self.reject(aborted.status, aborted.code, aborted.reason)
            return False
        if isinstance(exc, ConnectionError) and self.stream.is_closing():
            server.count("disconnects")
            return False
        server.count("app_errors")
        log.error(
            "service=%s peer=%s application error",
            server.service,
            self.peer["spiffe_id"],
            exc_info=exc,
        )
        if exchange.complete:
            pass  # the client has a whole response (e.g. a framework's own 500); just close
        elif exchange.head_sent:
            self.stream.abort("the application failed mid-response")
        else:
            await self.reject(500, "internal_error", "the application raised an exception")
        return False

    async def reject(self, status: int, code: str, reason: str) -> None:
        """Answer with an error and a reason, then close; or reset if a head already left."""
        server = self.server
        if status < 500:
            server.count("bad_requests")
            log.info(
                "service=%s peer=%s rejected: %s", server.service, self.peer["spiffe_id"], code
            )
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.stream.abort(reason)
            return
        body = json.dumps({"error": {"code": code, "message": reason}}).encode()
        headers: Headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            await self.send(h11.Response(status_code=status, headers=headers))
            await self.send(h11.Data(data=body))
            await self.send(h11.EndOfMessage())
        except (ConnectionError, h11.LocalProtocolError):
            self.stream.abort(reason)

    async def _finish_request_body(self) -> bool:
        """Read and discard a short unread request body so the connection can be reused."""
        connection = self.h11
        if connection.our_state is not h11.DONE or connection.they_are_waiting_for_100_continue:
            return False
        discarded = 0
        while connection.their_state is h11.SEND_BODY:
            try:
                event = await self.next_event()
            except h11.RemoteProtocolError:
                return False
            if isinstance(event, h11.Data):
                discarded += len(event.data)
                if discarded > _DRAIN_LIMIT:
                    return False
            elif not isinstance(event, h11.EndOfMessage):
                return False
        return connection.their_state is h11.DONE

    async def next_event(self) -> Any:
        """The next h11 event, reading from the stream as needed (b"" at EOF)."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.read(_READ_SIZE)
            self.h11.receive_data(data)

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            self.stream.write(data)
            try:
                async with asyncio.timeout(self.server.write_timeout):
                    await self.stream.drain()
            except TimeoutError:
                # A client that stopped reading must not hold a task and its buffers forever.
                self.stream.abort("the client stopped reading")
                raise ConnectionAbortedError("the client stopped reading") from None


def _head_size(request: h11.Request) -> int:
    size = len(request.method) + len(request.target) + 12
    return size + sum(len(name) + len(value) + 4 for name, value in request.headers)


def _has_framing(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers)


def _reason(exc: h11.RemoteProtocolError) -> str:
    """h11's description of what was malformed, bounded (it may quote the peer's bytes)."""
    text = str(exc) or "malformed request"
    return f"malformed HTTP request: {text[:200]}"
