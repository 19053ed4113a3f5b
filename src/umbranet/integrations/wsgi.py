"""Serve a WSGI app dark: the overlay's HTTP server core, with the app run in a thread pool.

WSGI apps block, so each request's app call runs in a worker thread; its body reads and
response writes hop back onto the event loop, where the stream lives. The environ carries the
dialer's proven identity:

    environ["umbranet.peer"] == {"name", "spiffe_id", "attributes"}
    environ["umbranet.service"] == "billing"
    environ["REMOTE_USER"] == peer SPIFFE ID

Request headers whose names contain "_" are dropped: in the environ they would be
indistinguishable from "-" names, which would let a client forge headers a proxy set.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes, urlsplit

from umbranet.integrations.serving import Exchange, OverlayHttpServer
from umbranet.sdk.context import Context

__all__ = ["WSGIApp", "WsgiServer", "serve_wsgi"]

T = TypeVar("T")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


async def serve_wsgi(context: Context, service: str, app: WSGIApp, **options: Any) -> None:
    """Serve `app` as `service` until cancelled (options: see WsgiServer)."""
    await WsgiServer(context, service, app, **options).serve_forever()


class WsgiServer(OverlayHttpServer):
    """A WSGI (PEP 3333) server whose only transport is the overlay.

    `max_workers` bounds how many app calls run at once; more requests wait for a thread.
    """

    def __init__(
        self,
        context: Context,
        service: str,
        app: WSGIApp,
        *,
        max_workers: int = 16,
        **options: Any,
    ) -> None:
        super().__init__(context, service, **options)
        self.app = app
        self._max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        self._closed = threading.Event()

    async def startup(self) -> None:
        self._closed.clear()
        self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="umbra-wsgi")

    async def shutdown(self) -> None:
        self._closed.set()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def handle(self, exchange: Exchange) -> None:
        loop = asyncio.get_running_loop()
        bridge = _Bridge(loop, self._closed)
        await loop.run_in_executor(self._executor, self._call_app, exchange, bridge)

    # -- in a worker thread -----------------------------------------------------------------

    def _call_app(self, exchange: Exchange, bridge: _Bridge) -> None:
        environ = self._environ(exchange, bridge)
        response = _Response(exchange, bridge)
        result = self.app(environ, response.start_response)
        try:
            held: bytes | None = None  # one chunk behind, so the last write can say "end"
            for chunk in result:
                if not chunk:
                    continue
                if held is not None:
                    response.write(held)
                held = bytes(chunk)
            response.finish(held or b"")
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _environ(self, exchange: Exchange, bridge: _Bridge) -> dict[str, Any]:
        request = exchange.request
        target = bytes(request.target)
        if not target.startswith(b"/") and b"://" in target:
            parts = urlsplit(target)
            raw_path, query = parts.path or b"/", parts.query
        else:
            raw_path, _, query = target.partition(b"?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method.decode("ascii"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": self.service,
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
            "REMOTE_USER": exchange.peer["spiffe_id"],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": _Input(exchange, bridge),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "umbranet.peer": exchange.peer,
            "umbranet.service": self.service,
        }
        for raw_name, raw_value in request.headers:
            name = raw_name.decode("latin-1").upper()
            if "_" in name:
                continue
            value = raw_value.decode("latin-1")
            if name == "CONTENT-TYPE":
                key = "CONTENT_TYPE"
            elif name == "CONTENT-LENGTH":
                key = "CONTENT_LENGTH"
            else:
                key = "HTTP_" + name.replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ


class _Bridge:
    """Runs coroutines on the server's loop from a worker thread, and waits for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, closed: threading.Event) -> None:
        self._loop = loop
        self._closed = closed

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed.is_set():
            coroutine.close()
            raise ConnectionAbortedError("the server is shutting down")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


class _Response:
    """start_response and the body writes of one WSGI call."""

    def __init__(self, exchange: Exchange, bridge: _Bridge) -> None:
        self._exchange = exchange
        self._bridge = bridge

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        exchange = self._exchange
        if exc_info is not None:
            if exchange.head_sent:
                raise exc_info[1].with_traceback(exc_info[2])
            exchange.replace_head()
        code, _, reason = status.partition(" ")
        exchange.start(
            int(code),
            [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            reason.encode("latin-1"),
        )
        return self.write

    def write(self, data: bytes) -> None:
        self._bridge.call(self._exchange.write(bytes(data)))

    def finish(self, data: bytes) -> None:
        if not self._exchange.started:
            raise RuntimeError("the WSGI app returned without calling start_response")
        self._bridge.call(self._exchange.write(data, end=True))


class _Input:
    """wsgi.input: the request body, read on demand from the stream."""

    def __init__(self, exchange: Exchange, bridge: _Bridge) -> None:
        self._exchange = exchange
        self._bridge = bridge
        self._buffer = bytearray()
        self._eof = False

    def read(self, size: int | None = -1) -> bytes:
        while (size is None or size < 0 or len(self._buffer) < size) and self._fill():
            pass
        return self._take(len(self._buffer) if size is None or size < 0 else size)

    def readline(self, size: int | None = -1) -> bytes:
        while True:
            end = self._buffer.find(b"\n") + 1
            if end or (size is not None and 0 <= size <= len(self._buffer)):
                break
            if not self._fill():
                end = len(self._buffer)
                break
        if size is not None and size >= 0:
            end = min(end or size, size)
        return self._take(end)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def _fill(self) -> bool:
        if self._eof:
            return False
        data, more = self._bridge.call(self._exchange.receive())
        self._buffer += data
        self._eof = not more
        return True

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data
