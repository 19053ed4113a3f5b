"""Serve an ASGI app dark through uvicorn's own HTTP protocol, one overlay stream at a time.

`serve_uvicorn(app, listener)` accepts streams from an overlay `Listener`, bridges each to a
socket (`stream.as_socket`) and runs uvicorn's HTTP/1.1 protocol on it with
``loop.connect_accepted_socket``, so uvicorn's parser, keep-alive and flow control apply
unchanged while no port is opened. The dialer's identity reaches the app as in `asgi`:
``scope["extensions"]["umbranet"]["peer"]`` (what `auth` reads) and ``scope["client"]``.

Each connection gets its own app wrapper bound to its stream's peer (`asgi_peer.with_peer`).
HTTP/2 apps are served by `hypercorn_host.serve_hypercorn`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from umbranet.integrations.asgi_peer import with_peer
from umbranet.integrations.serving import peer_info
from umbranet.sdk.listener import Listener
from umbranet.sdk.socket_bridge import stream_socket

__all__ = ["serve_uvicorn"]


async def serve_uvicorn(app: Any, listener: Listener, **config: Any) -> None:
    """Serve `app` on every stream `listener` accepts until cancelled (uvicorn's h11 protocol)."""
    from uvicorn.config import Config  # optional dependency: import only when used
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.server import ServerState

    settings = Config(app, http="h11", lifespan="off", **config)
    settings.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    service = listener.service
    async for stream in listener:
        wrapped = with_peer(settings.loaded_app, peer_info(stream.peer), service)

        def factory(wrapped: Any = wrapped) -> H11Protocol:
            protocol = H11Protocol(settings, state, {})
            protocol.app = wrapped  # per-connection app carrying this stream's identity
            return protocol

        await loop.connect_accepted_socket(factory, sock=stream_socket(stream))
