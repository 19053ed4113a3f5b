"""gRPC served dark and called through the overlay, with grpclib (pure-asyncio gRPC on h2).

grpcio's server can only bind ports, so a dark gRPC service needs a server that can take an
already-connected socket: grpclib's HTTP/2 protocol is an asyncio ``Protocol``, so each overlay
stream the listener accepts is bridged to a socket (`stream.as_socket`) and attached to a fresh
grpclib connection with ``loop.connect_accepted_socket``. The service code is ordinary grpclib
(handlers from ``protoc --grpclib_python_out`` or written by hand); nothing listens anywhere.

    server = grpclib.server.Server([Greeter()])          # as for server.start(host, port)
    await serve_grpc(server, ctx.listen("greeter"))      # instead: no port

    async with OverlayChannel(ctx, "greeter") as channel: # the client: one stream per channel
        reply = await GreeterStub(channel).SayHello(HelloRequest(name="x"))

The dialer's proven identity reaches every call as the metadata entry ``umbranet-peer`` (its
SPIFFE ID; `grpc_peer(stream)` reads it). The host writes it from the overlay stream's peer and
drops whatever ``umbranet-*`` metadata the caller sent, so a client cannot claim an identity;
each drop is counted (``spoofed_metadata``) and logged. Who may call at all is the policy's
decision, taken at the dial, before any gRPC byte reaches the server.

Cleartext h2 inside the stream is deliberate: the overlay stream is end-to-end encrypted and
both ends are proven, so TLS would add a second PKI and nothing else.

The seams are grpclib internals (the server's handler mapping, codecs, configuration and event
dispatch; the channel's connection factory), so ``pyproject.toml`` pins ``grpclib>=0.4.9,<0.5``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from grpclib.client import Channel
from grpclib.protocol import H2Protocol
from grpclib.server import Handler, Server

from umbranet.sdk.context import Context
from umbranet.sdk.listener import Listener
from umbranet.sdk.socket_bridge import stream_socket

if TYPE_CHECKING:
    import grpclib.config
    import grpclib.protocol
    import grpclib.server
    from h2.config import H2Configuration

__all__ = ["PEER_METADATA", "GrpcHost", "OverlayChannel", "grpc_peer", "serve_grpc"]

log = logging.getLogger("umbranet.integrations")

PEER_METADATA = "umbranet-peer"
_RESERVED_PREFIX = "umbranet-"


async def serve_grpc(server: Server, listener: Listener) -> None:
    """Serve `server`'s handlers on every stream `listener` accepts, until cancelled."""
    await GrpcHost(server, listener).serve()


def grpc_peer(stream: grpclib.server.Stream[Any, Any]) -> str | None:
    """The SPIFFE ID of the caller of a call served by `serve_grpc` (None elsewhere)."""
    value = stream.metadata.get(PEER_METADATA) if stream.metadata is not None else None
    return value if isinstance(value, str) else None


class GrpcHost:
    """One overlay listener serving a grpclib `Server`'s handlers; see the module docstring.

    `statistics()`: ``accepted`` connections, ``active`` ones, ``calls`` accepted and
    ``spoofed_metadata`` (calls that carried ``umbranet-*`` metadata, dropped).
    """

    def __init__(self, server: Server, listener: Listener) -> None:
        self._server = server
        self._listener = listener
        self._live: set[_HostProtocol] = set()
        self.counters: Counter[str] = Counter()

    def statistics(self) -> dict[str, int]:
        return {"active": len(self._live), **self.counters}

    async def serve(self) -> None:
        """Serve until cancelled or the listener closes; then cancel the calls in flight."""
        loop = asyncio.get_running_loop()
        # The server's own configuration (windows, keepalive) for every overlay connection.
        config, h2_config = self._server._config, self._server._h2_config
        try:
            async for stream in self._listener:
                handler = _PeerHandler(self._server, stream.peer.spiffe_id, self.counters)
                factory = functools.partial(_HostProtocol, handler, config, h2_config, self._live)
                await loop.connect_accepted_socket(factory, sock=stream_socket(stream))
                self.counters["accepted"] += 1
        finally:
            live = list(self._live)
            for protocol in live:
                protocol.handler.close()
                protocol.transport.close()
            await asyncio.gather(*(p.handler.wait_closed() for p in live))


class _HostProtocol(H2Protocol):
    """grpclib's connection protocol, kept in the host's live set while connected."""

    handler: _PeerHandler
    transport: asyncio.BaseTransport

    def __init__(
        self,
        handler: _PeerHandler,
        config: grpclib.config.Configuration,
        h2_config: H2Configuration,
        live: set[_HostProtocol],
    ) -> None:
        super().__init__(handler, config, h2_config)
        self._live = live

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._live.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._live.discard(self)
        super().connection_lost(exc)


class _PeerHandler(Handler):
    """grpclib's per-connection request handler, stamping each call with the stream's peer."""

    def __init__(self, server: Server, peer: str, counters: Counter[str]) -> None:
        super().__init__(
            server._mapping, server._codec, server._status_details_codec, server.__dispatch__
        )
        self._peer = peer
        self._counters = counters

    def accept(
        self,
        stream: grpclib.protocol.Stream,
        headers: list[tuple[str, str]],
        release_stream: Callable[[], Any],
    ) -> None:
        kept = [(k, v) for k, v in headers if not k.lower().startswith(_RESERVED_PREFIX)]
        if len(kept) != len(headers):
            self._counters["spoofed_metadata"] += 1
            log.warning(
                "dropped caller-supplied metadata code=%s peer=%s reason=%s",
                "spoofed_metadata",
                self._peer,
                "umbranet-* metadata is written by the host only",
            )
        kept.append((PEER_METADATA, self._peer))
        self._counters["calls"] += 1
        super().accept(stream, kept, release_stream)


class OverlayChannel(Channel):
    """A grpclib `Channel` whose connection is an overlay stream dialed to `service`.

    One channel multiplexes its calls on one stream (HTTP/2), as over one TCP connection; a
    lost stream is dialed again on the next call. A refused dial raises the SDK's
    `DialError` (``code``: e.g. ``not_authorized``) from the call.
    """

    def __init__(self, context: Context, service: str, **options: Any) -> None:
        super().__init__(host=f"{service}.umbra", port=80, **options)
        self._context = context
        self._service = service

    async def _create_connection(self) -> H2Protocol:
        stream = await self._context.dial(self._service)
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_unix_connection(
            self._protocol_factory, sock=stream_socket(stream)
        )
        return protocol
