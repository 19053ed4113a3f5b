"""Serve an ASGI app dark through uvicorn's own HTTP protocol, one overlay stream at a time.

`serve_uvicorn(app, listener)` accepts streams from an overlay `Listener`, bridges each to a
socket (`stream.as_socket`) and runs uvicorn's HTTP/1.1 protocol on it with
``loop.connect_accepted_socket``, so uvicorn's parser, keep-alive and flow control apply
unchanged while no port is opened. The dialer's identity reaches the app as in `asgi`:
``scope["extensions"]["umbranet"]["peer"]`` (what `auth` reads) and ``scope["client"]``.

Each connection gets its own app wrapper bound to its stream's peer: a Unix socketpair has no
address uvicorn could report, so the identity cannot be recovered from the socket later.
"""

from __future__ import annotations

import asyncio
from typing import Any

from umbranet.integrations.serving import peer_info
from umbranet.sdk.listener import Listener
from umbranet.sdk.socket_bridge import stream_socket

__all__ = ["serve_uvicorn"]


def _with_peer(app: Any, peer: dict[str, Any], service: str) -> Any:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            scope["client"] = (peer["spiffe_id"], 0)
            extensions = dict(scope.get("extensions") or {})
            extensions["umbranet"] = {"peer": peer, "service": service}
            scope["extensions"] = extensions
        await app(scope, receive, send)

    return wrapped


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
        wrapped = _with_peer(settings.loaded_app, peer_info(stream.peer), service)

        def factory(wrapped: Any = wrapped) -> H11Protocol:
            protocol = H11Protocol(settings, state, {})
            protocol.app = wrapped  # per-connection app carrying this stream's identity
            return protocol

        await loop.connect_accepted_socket(factory, sock=stream_socket(stream))
