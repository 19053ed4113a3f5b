"""Put an overlay stream's proven peer into the ASGI scope, for servers that know nothing of it.

Third-party ASGI servers (uvicorn, hypercorn) hosted on bridged sockets see a Unix socketpair
with no address, so the dialer's identity cannot be recovered from the connection later. The
host therefore wraps the app once per connection, while it still holds the stream, and the
wrapper writes the identity where `serve_asgi` puts it: ``scope["extensions"]["umbranet"]``
(what `integrations.auth` reads) and ``scope["client"]`` as ``(spiffe_id, 0)``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["with_peer"]


def with_peer(app: Any, peer: dict[str, Any], service: str) -> Any:
    """`app` with `peer` (from `serving.peer_info`) written into every HTTP/WebSocket scope.

    Lifespan scopes pass unchanged: they belong to no connection.
    """

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            scope["client"] = (peer["spiffe_id"], 0)
            extensions = dict(scope.get("extensions") or {})
            extensions["umbranet"] = {"peer": peer, "service": service}
            scope["extensions"] = extensions
        await app(scope, receive, send)

    return wrapped
