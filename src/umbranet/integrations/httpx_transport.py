"""httpx transports that reach dark services by URL: `http://billing.umbra/...` -> "billing".

httpcore already does HTTP/1.1 well (pooling, keep-alive, framing); all it needs from below
is a way to open a byte stream to a host. So the overlay plugs in as an httpcore network
backend whose `connect_tcp(host, port)` dials the service the host names, and the transport
maps httpx requests and errors to httpcore and back, as httpx's own HTTPTransport does.
Pooled connections are overlay streams, so keep-alive saves a dial (ticket, handshake).

    async with Context.from_file("app.json") as ctx:
        async with httpx.AsyncClient(transport=UmbraTransport(ctx)) as client:
            r = await client.get("http://billing.umbra/invoices")

Only `http://` URLs: streams are end-to-end encrypted and both ends proven already, so TLS
inside them would add nothing but a second PKI. ``http2=True`` speaks HTTP/2 with prior
knowledge (h2c, one stream multiplexing the requests; needs ``httpx[http2]`` and a server that
speaks it, such as `hypercorn_host.serve_hypercorn`). Dial refusals surface as
`UmbraConnectError` (an httpx.ConnectError) carrying the overlay's `code` and `reason`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from umbranet.integrations.naming import NamingError, ServiceNamer
from umbranet.sdk.context import Context
from umbranet.sdk.errors import DialError, StreamReset, UmbraError
from umbranet.sdk.stream import Stream

if TYPE_CHECKING:
    import ssl

    from umbranet.sdk.blocking import BlockingContext, BlockingStream

__all__ = [
    "OverlayNetworkBackend",
    "SyncOverlayNetworkBackend",
    "UmbraConnectError",
    "UmbraSyncTransport",
    "UmbraTransport",
]

_DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
_NO_TLS = (
    "TLS inside overlay streams is not supported: they are end-to-end encrypted and both "
    "ends proven already; use http:// URLs"
)


class UmbraConnectError(httpx.ConnectError):
    """The overlay refused the dial: `code` and `reason` are the controller's, router's or
    host's (e.g. `not_authorized`, `unknown_service`, `no_terminator`)."""

    def __init__(
        self, message: str, *, code: str, reason: str, request: httpx.Request | None = None
    ) -> None:
        super().__init__(message, request=request)
        self.code = code
        self.reason = reason


def _pool_limits(limits: httpx.Limits) -> dict[str, Any]:
    """httpx's pool limits in httpcore's terms (shared by the async and sync transports)."""
    return {
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
    }


class UmbraTransport(httpx.AsyncBaseTransport):
    """An httpx async transport over overlay streams (HTTP/1.1, pooled, keep-alive).

    ``http2=True`` speaks HTTP/2 only: with no TLS there is no ALPN to choose by, so HTTP/2 is
    spoken from the first byte (prior knowledge), which an HTTP/1.1-only server cannot answer.
    """

    def __init__(
        self,
        context: Context,
        *,
        namer: ServiceNamer | None = None,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        dial_timeout: float = 10.0,
        http2: bool = False,
    ) -> None:
        self.backend = OverlayNetworkBackend(context, namer or ServiceNamer(), dial_timeout)
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=self.backend,
            **_pool_limits(limits),
            http1=not http2,
            http2=http2,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _translated(request):
            response = await self._pool.handle_async_request(_to_httpcore(request))
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_AsyncBody(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()

    def statistics(self) -> dict[str, Any]:
        return {"dials": self.backend.dials, "pooled": len(self._pool.connections)}


class UmbraSyncTransport(httpx.BaseTransport):
    """An httpx sync transport (for `httpx.Client`) over a BlockingContext's streams.

    Reads honour httpx's read timeout; writes wait for flow-control credit without one.
    """

    def __init__(
        self,
        context: BlockingContext,
        *,
        namer: ServiceNamer | None = None,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        dial_timeout: float = 10.0,
        http2: bool = False,
    ) -> None:
        self.backend = SyncOverlayNetworkBackend(context, namer or ServiceNamer(), dial_timeout)
        self._pool = httpcore.ConnectionPool(
            network_backend=self.backend,
            **_pool_limits(limits),
            http1=not http2,
            http2=http2,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with _translated(request):
            response = self._pool.handle_request(_to_httpcore(request))
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_SyncBody(response.stream, request),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class OverlayNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's view of the overlay: `connect_tcp(host, port)` dials the named service."""

    def __init__(self, context: Context, namer: ServiceNamer, dial_timeout: float) -> None:
        self._context = context
        self._namer = namer
        self._dial_timeout = dial_timeout
        self.dials = 0

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        service = _service(self._namer, host)
        limit = self._dial_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                stream = await self._context.dial(service, limit)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"dial_timeout: no answer from {service}") from exc
        except DialError as exc:
            raise _connect_error(exc) from exc
        self.dials += 1
        return _AsyncOverlayStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("the overlay transport dials services, not sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class SyncOverlayNetworkBackend(httpcore.NetworkBackend):
    """The blocking twin of OverlayNetworkBackend, over a BlockingContext."""

    def __init__(self, context: BlockingContext, namer: ServiceNamer, dial_timeout: float) -> None:
        self._context = context
        self._namer = namer
        self._dial_timeout = dial_timeout
        self.dials = 0

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        service = _service(self._namer, host)
        try:
            stream = self._context.dial(service, self._dial_timeout if timeout is None else timeout)
        except DialError as exc:
            raise _connect_error(exc) from exc
        self.dials += 1
        return _SyncOverlayStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.UnsupportedProtocol("the overlay transport dials services, not sockets")


# -- streams ------------------------------------------------------------------------------


class _AsyncOverlayStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._stream.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(f"no data from {self._stream.service}") from exc
        except DialError as exc:  # a 0-RTT dial refused after it returned
            raise _connect_error(exc) from exc
        except StreamReset as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._stream.write(buffer)
                await self._stream.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(f"{self._stream.service} is not reading") from exc
        except DialError as exc:
            raise _connect_error(exc) from exc
        except StreamReset as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        # write_eof, not Stream.close (which recurses once the host's EOF arrives): the host
        # answers our EOF with its own and the circuit ends.
        self._stream.write_eof()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError(_NO_TLS)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # An idle pooled stream is "readable" once the host ended it: httpcore then
            # drops it from the pool instead of sending a request into a closed stream.
            return self._stream.at_eof() or self._stream.is_closing()
        return self._stream.get_extra_info(info)


class _SyncOverlayStream(httpcore.NetworkStream):
    def __init__(self, stream: BlockingStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return self._stream.recv(max_bytes, timeout)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(f"no data from the service in {timeout}s") from exc
        except DialError as exc:  # a 0-RTT dial refused after it returned
            raise _connect_error(exc) from exc
        except StreamReset as exc:
            raise httpcore.ReadError(str(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._stream.sendall(buffer)
        except DialError as exc:
            raise _connect_error(exc) from exc
        except StreamReset as exc:
            raise httpcore.WriteError(str(exc)) from exc

    def close(self) -> None:
        # The blocking context may already be closed (its loop gone); nothing left to end.
        with contextlib.suppress(RuntimeError, ConnectionError):
            self._stream.shutdown_write()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError(_NO_TLS)

    def get_extra_info(self, info: str) -> Any:
        if info == "peer":
            return self._stream.peer
        return None


# -- httpx <-> httpcore ---------------------------------------------------------------------


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, parts: AsyncIterable[bytes], request: httpx.Request) -> None:
        self._parts = parts
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _translated(self._request):
            async for part in self._parts:
                yield part

    async def aclose(self) -> None:
        aclose = getattr(self._parts, "aclose", None)
        if aclose is not None:
            await aclose()


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, parts: Iterable[bytes], request: httpx.Request) -> None:
        self._parts = parts
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with _translated(self._request):
            yield from self._parts

    def close(self) -> None:
        close = getattr(self._parts, "close", None)
        if close is not None:
            close()


def _to_httpcore(request: httpx.Request) -> httpcore.Request:
    if request.url.scheme != "http":
        raise httpx.UnsupportedProtocol(
            f"{request.url.scheme}:// is not supported over the overlay: {_NO_TLS}",
            request=request,
        )
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        ),
        headers=request.headers.raw,
        content=request.stream,
        extensions=request.extensions,
    )


# Most specific first: the first match wins.
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _translated(request: httpx.Request) -> Iterator[None]:
    """httpcore's exceptions as httpx's (the boundary where they change name)."""
    try:
        yield
    except Exception as exc:
        for source, target in _EXCEPTIONS:
            if isinstance(exc, source):
                if isinstance(exc, _RefusedDial):
                    raise UmbraConnectError(
                        str(exc), code=exc.code, reason=exc.reason, request=request
                    ) from exc
                raise target(str(exc), request=request) from exc
        raise


class _RefusedDial(httpcore.ConnectError):
    """Carries the overlay's code through httpcore (whose pool re-raises `from None`)."""

    def __init__(self, error: UmbraError) -> None:
        super().__init__(str(error))
        self.code = error.code
        self.reason = error.reason


def _service(namer: ServiceNamer, host: str) -> str:
    try:
        return namer.service_for(host)
    except NamingError as exc:
        raise _RefusedDial(exc) from exc


def _connect_error(exc: DialError) -> Exception:
    if exc.code == "dial_timeout":
        return httpcore.ConnectTimeout(str(exc))
    return _RefusedDial(exc)
