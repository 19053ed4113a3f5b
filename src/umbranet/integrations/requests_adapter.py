"""A requests adapter that reaches dark services by URL: `http://billing.umbra/...`.

requests talks to urllib3 connection pools, and urllib3 to sockets. So the adapter keeps
urllib3 doing what it does well (pooling, keep-alive, chunked uploads, retries, decoding)
and swaps only the socket: each pooled connection's "socket" is an overlay stream from a
BlockingContext, dialed for the service the URL's host names.

    with BlockingContext("app.json") as ctx, requests.Session() as session:
        session.mount("http://", UmbraAdapter(ctx))
        session.get("http://billing.umbra/invoices")

Proxies from the environment are ignored for these URLs: the overlay is the route. Reads
honour the request's read timeout (a `socket.timeout`, as urllib3 expects); connect uses the
dial's.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from collections.abc import Callable
from typing import Any, cast

from requests.adapters import HTTPAdapter
from requests.exceptions import InvalidURL
from requests.models import PreparedRequest
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import NewConnectionError
from urllib3.util import parse_url

from umbranet.integrations.naming import NamingError, ServiceNamer
from umbranet.sdk.blocking import BlockingContext, BlockingStream
from umbranet.sdk.errors import DialError

__all__ = ["UmbraAdapter"]

Dial = Callable[[str, float], BlockingStream]


class UmbraAdapter(HTTPAdapter):
    """Mount on ``http://`` (or a prefix such as ``http://billing.umbra``) of a Session."""

    def __init__(
        self,
        context: BlockingContext,
        *,
        namer: ServiceNamer | None = None,
        dial_timeout: float = 10.0,
        pool_maxsize: int = 10,
        max_retries: int = 0,
    ) -> None:
        self._context = context
        self._namer = namer or ServiceNamer()
        self._dial_timeout = dial_timeout
        self._pool_maxsize = pool_maxsize
        self._pools: dict[tuple[str, int], _OverlayPool] = {}
        self._pools_lock = threading.Lock()
        self.dials = 0
        super().__init__(pool_maxsize=pool_maxsize, max_retries=max_retries)

    def get_connection_with_tls_context(
        self,
        request: PreparedRequest,
        verify: Any,
        proxies: dict[str, str] | None = None,
        cert: Any = None,
    ) -> HTTPConnectionPool:
        url = parse_url(request.url or "")
        if url.scheme != "http" or not url.host:
            raise InvalidURL(
                f"{request.url!r}: only http://SERVICE URLs go through the overlay "
                "(streams are end-to-end encrypted already)",
                request=request,
            )
        try:
            service = self._namer.service_for(url.host)
        except NamingError as exc:
            raise InvalidURL(exc.reason, request=request) from exc
        key = (url.host.lower(), url.port or 80)
        with self._pools_lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = _OverlayPool(key[0], key[1], service, self._dial, self._pool_maxsize)
                self._pools[key] = pool
        return pool

    def request_url(self, request: PreparedRequest, proxies: dict[str, str] | None) -> str:
        return request.path_url

    def close(self) -> None:
        super().close()
        with self._pools_lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def _dial(self, service: str, timeout: float) -> BlockingStream:
        stream = self._context.dial(service, timeout)
        self.dials += 1
        return stream


class _OverlayConnection(HTTPConnection):
    """A urllib3 connection whose socket is an overlay stream to `service`."""

    def __init__(
        self, host: str, port: int | None = None, *, service: str, dial: Dial, **options: Any
    ) -> None:
        super().__init__(host, port, **options)
        self._service = service
        self._overlay_dial = dial

    def _new_conn(self) -> socket.socket:
        timeout = self.timeout if isinstance(self.timeout, int | float) else 10.0
        try:
            stream = self._overlay_dial(self._service, float(timeout))
        except DialError as exc:
            raise NewConnectionError(
                self, f"overlay dial to {self._service} failed: {exc}"
            ) from exc
        # http.client and urllib3 only use the socket methods _StreamSocket has.
        return cast(socket.socket, _StreamSocket(stream))

    @property
    def is_connected(self) -> bool:
        sock = cast(Any, self.sock)
        return sock is not None and not sock.closed


class _OverlayPool(HTTPConnectionPool):
    ConnectionCls = _OverlayConnection

    def __init__(self, host: str, port: int, service: str, dial: Dial, maxsize: int) -> None:
        super().__init__(host, port, maxsize=maxsize, service=service, dial=dial)


class _StreamSocket:
    """Just enough of socket.socket for http.client and urllib3, over a BlockingStream.

    Like a real socket, closing it while a response still reads from its makefile() defers
    the end of the stream until that file closes too: http.client hands the socket to the
    response that way when the server says ``Connection: close``.
    """

    def __init__(self, stream: BlockingStream) -> None:
        self._stream = stream
        self._timeout: float | None = None
        self._files = 0
        self.closed = False
        self._ended = False

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        self._stream.sendall(bytes(data))

    def send(self, data: bytes | bytearray | memoryview) -> int:
        payload = bytes(data)
        self._stream.sendall(payload)
        return len(payload)

    def recv(self, size: int) -> bytes:
        return self._stream.recv(size, self._timeout)

    def recv_into(self, buffer: Any, size: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self._stream.recv(size or len(view), self._timeout)
        view[: len(data)] = data
        return len(data)

    def makefile(self, mode: str = "rb", buffering: int | None = None, **_: Any) -> io.IOBase:
        if mode.strip("b") != "r":
            raise ValueError(f"overlay sockets make read-only files, not {mode!r}")
        self._files += 1
        return io.BufferedReader(_SocketReader(self))

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def setsockopt(self, *args: Any) -> None:
        return None

    def shutdown(self, how: int) -> None:
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self._stream.shutdown_write()

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self.closed = True
        if self._files <= 0:
            self._end()

    def file_closed(self) -> None:
        self._files -= 1
        if self.closed and self._files <= 0:
            self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            # The blocking context may be closed already (its loop gone).
            # shutdown_write, not close: Stream.close recurses once the host's EOF arrives.
            with contextlib.suppress(RuntimeError, ConnectionError):
                self._stream.shutdown_write()


class _SocketReader(io.RawIOBase):
    """The raw file under makefile("rb")."""

    def __init__(self, sock: _StreamSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._sock.file_closed()
