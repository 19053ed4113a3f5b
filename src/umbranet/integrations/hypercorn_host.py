"""Serve an ASGI app dark through hypercorn's own protocol: HTTP/1.1 and HTTP/2 on each stream.

`serve_hypercorn(app, listener)` (or `HypercornHost`) accepts streams from an overlay
`Listener`, bridges each to a socket (`stream.as_socket`) and runs hypercorn's connection
driver on it, so hypercorn's HTTP/1.1 (h11) and HTTP/2 (h2) code, flow control, stream
limits and keep-alive apply unchanged while no port is opened anywhere.

HTTP/2 is spoken in cleartext: with prior knowledge (the client starts with the h2 preface,
e.g. ``UmbraTransport(ctx, http2=True)``) or by an ``Upgrade: h2c`` request. There is no TLS
and so no ALPN inside the stream, on purpose: an overlay stream is already end-to-end
encrypted and both ends are proven by their certificates, so TLS would only add a second PKI
and a second encryption. A client that speaks HTTP/1.1 is served HTTP/1.1 on the same service.

The dialer's identity reaches the app as with `serve_asgi`: ``scope["extensions"]["umbranet"]``
(what `integrations.auth` reads) and ``scope["client"] == (spiffe_id, 0)``. Which dialers get
a stream at all is the policy's decision, taken before the app runs. A service whose policy has
HTTP rules is served HTTP/1.1 only: the HTTP gate reads HTTP/1.1 requests and refuses an
HTTP/2 preface (it could not judge the requests inside it).

The seam is hypercorn's ``hypercorn.asyncio.tcp_server.TCPServer``, the object hypercorn's own
``serve`` runs for every accepted connection (reader, writer, app wrapper, config, worker
context, lifespan state); it is internal, so the versions this relies on are pinned in
``pyproject.toml`` (``hypercorn>=0.18,<0.19``). Lifespan runs as hypercorn runs it, once per
`serve` (``lifespan=False`` skips it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from umbranet.integrations.asgi_peer import with_peer
from umbranet.integrations.serving import peer_info
from umbranet.sdk.listener import Listener
from umbranet.sdk.socket_bridge import stream_socket
from umbranet.sdk.stream import Stream

if TYPE_CHECKING:
    from hypercorn.asyncio.worker_context import WorkerContext
    from hypercorn.config import Config

__all__ = ["HypercornHost", "serve_hypercorn"]

log = logging.getLogger("umbranet.integrations")


async def serve_hypercorn(
    app: Any,
    listener: Listener,
    *,
    config: Config | None = None,
    lifespan: bool = True,
    **settings: Any,
) -> None:
    """Serve `app` on every stream `listener` accepts until cancelled (HTTP/1.1 and h2c).

    `config` is a ``hypercorn.config.Config``; `settings` are its attributes by name (e.g.
    ``keep_alive_timeout=30``, ``h2_max_concurrent_streams=50``) when no `config` is given.
    Bind, TLS and worker settings do not apply: the overlay does all three.
    """
    await HypercornHost(app, listener, config=config, lifespan=lifespan, **settings).serve()


class HypercornHost:
    """One overlay listener served by hypercorn; `statistics()` counts its connections.

    Counters: ``accepted`` (streams handed to hypercorn), ``http2`` (of those, connections
    that spoke HTTP/2), ``closed``, and ``failed`` for a connection hypercorn's driver raised
    on (logged with its reason; other connections are not affected).
    """

    def __init__(
        self,
        app: Any,
        listener: Listener,
        *,
        config: Config | None = None,
        lifespan: bool = True,
        **settings: Any,
    ) -> None:
        from hypercorn.config import Config  # optional dependency: import only when used

        if config is not None and settings:
            raise TypeError("give either a hypercorn Config or settings, not both")
        self._app = app
        self._listener = listener
        self._config = config if config is not None else Config.from_mapping(settings)
        self._lifespan = lifespan
        self._active = 0
        self.counters: Counter[str] = Counter()

    def statistics(self) -> dict[str, int]:
        return {"active": self._active, **self.counters}

    async def serve(self) -> None:
        """Run the app's lifespan, then serve streams until cancelled or the listener closes."""
        from hypercorn.asyncio.lifespan import Lifespan
        from hypercorn.asyncio.worker_context import WorkerContext
        from hypercorn.utils import wrap_app

        loop = asyncio.get_running_loop()
        state: dict[str, Any] = {}
        context = WorkerContext(None)
        runner: Lifespan | None = None
        lifespan_task: asyncio.Task[None] | None = None
        if self._lifespan:
            runner = Lifespan(
                wrap_app(self._app, self._config.wsgi_max_body_size, "asgi"),
                self._config,
                loop,
                state,
            )
            lifespan_task = loop.create_task(runner.handle_lifespan())
            await runner.wait_for_startup()
            if lifespan_task.done() and (error := lifespan_task.exception()) is not None:
                raise error
        try:
            async with asyncio.TaskGroup() as connections:
                async for stream in self._listener:
                    connections.create_task(self._connection(stream, context, state))
        finally:
            await context.terminated.set()
            if runner is not None and lifespan_task is not None:
                try:
                    await runner.wait_for_shutdown()
                except Exception as exc:  # the app's shutdown failing must not mask why we stop
                    log.warning("lifespan shutdown failed reason=%s", exc)
                lifespan_task.cancel()
                await asyncio.gather(lifespan_task, return_exceptions=True)

    async def _connection(
        self, stream: Stream, context: WorkerContext, state: dict[str, Any]
    ) -> None:
        from hypercorn.asyncio.tcp_server import TCPServer
        from hypercorn.protocol.h2 import H2Protocol
        from hypercorn.utils import wrap_app

        # Bound per connection, while the stream (and so the proven peer) is still at hand.
        app = wrap_app(
            with_peer(self._app, peer_info(stream.peer), self._listener.service),
            self._config.wsgi_max_body_size,
            "asgi",
        )
        self.counters["accepted"] += 1
        self._active += 1
        server: TCPServer | None = None
        try:
            reader, writer = await asyncio.open_connection(sock=stream_socket(stream))
            server = TCPServer(
                app, asyncio.get_running_loop(), self._config, context, state, reader, writer
            )
            await server.run()
        except Exception as exc:
            # One connection's fault must not reach the task group: it would end the others.
            self.counters["failed"] += 1
            log.warning(
                "hypercorn connection failed peer=%s reason=%s",
                stream.peer.spiffe_id,
                f"{type(exc).__name__}: {exc}",
            )
        finally:
            self._active -= 1
            self.counters["closed"] += 1
            protocol = getattr(getattr(server, "protocol", None), "protocol", None)
            if isinstance(protocol, H2Protocol):
                self.counters["http2"] += 1
