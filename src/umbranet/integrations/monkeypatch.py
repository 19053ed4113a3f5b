"""Opt-in socket patching: unmodified Python clients reach dark services by name.

`monkeypatch(context, dial={"db.internal:5432": "postgres-svc"})` replaces
``socket.create_connection`` so that a connection to a configured ``host:port``, or to any
``NAME.umbra`` host, is dialed through the overlay instead of the network. The caller gets a
real connected socket (one end of a socketpair the SDK pumps, see `sdk.socket_bridge`), so
drivers that speak their protocol over Python sockets (pg8000, redis-py, urllib, http.client)
work unchanged. `unpatch()` restores the original.

What cannot be patched: code that connects in C (libpq behind psycopg, libcurl) never calls
Python's socket functions; libpq also cannot be handed an already-connected descriptor. Use a
pure-Python driver, or the agent's redirect mode, for those.

Not done yet (issue 15 item 6): ``socket.socket.connect``, ``getaddrinfo`` and the dark
``bind``+``listen`` half; asyncio's ``open_connection`` by name.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from umbranet.sdk.blocking import BlockingContext
from umbranet.sdk.socket_bridge import stream_socket

__all__ = ["monkeypatch", "unpatch", "target_of"]

_SUFFIX = ".umbra"
_ORIGINAL = socket.create_connection
_lock = threading.Lock()
# The saved original lives under "original"; the rest is the active configuration.
_state: dict[str, Any] = {}


def target_of(host: str, port: int, dial: dict[str, str]) -> str | None:
    """The overlay service a connection to (host, port) goes to, or None for the network."""
    service = dial.get(f"{host}:{port}")
    if service is not None:
        return service
    if host.endswith(_SUFFIX) and len(host) > len(_SUFFIX):
        return host[: -len(_SUFFIX)]
    return None


def monkeypatch(context: BlockingContext, dial: dict[str, str] | None = None) -> None:
    """Route matching ``socket.create_connection`` calls through `context`; see module doc."""
    with _lock:
        _state.setdefault("original", socket.create_connection)
        _state["context"] = context
        _state["dial"] = dict(dial or {})
        setattr(socket, "create_connection", _create_connection)  # noqa: B010 (typeshed signature)


def unpatch() -> None:
    """Restore ``socket.create_connection``; safe to call when not patched."""
    with _lock:
        original = _state.pop("original", None)
        if original is not None:
            socket.create_connection = original
        _state.clear()


class _BridgedSocket(socket.socket):
    """The bridged socket, accepting the TCP options clients set on what they think is TCP.

    A socketpair end is a Unix socket: ``setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)`` (which
    http.client and redis-py do) would fail with EOPNOTSUPP. Those options only tune the local
    hop, which has no Nagle or keepalive to tune, so they are accepted and ignored.
    """

    def setsockopt(self, level: int, optname: int, value: Any, *rest: Any) -> None:
        if level == socket.IPPROTO_TCP:
            return
        super().setsockopt(level, optname, value, *rest)


def _wrap(sock: socket.socket) -> socket.socket:
    return _BridgedSocket(sock.family, sock.type, fileno=sock.detach())


def _create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
    host, port = address[0], int(address[1])
    context: BlockingContext | None = _state.get("context")
    service = target_of(host, port, _state.get("dial", {}))
    if context is None or service is None:
        return _state.get("original", _ORIGINAL)(address, *args, **kwargs)  # type: ignore[no-any-return]
    timeout = kwargs.get("timeout", args[0] if args else None)
    wait = timeout if isinstance(timeout, (int, float)) else 10.0

    async def open_bridged() -> socket.socket:
        stream = await context._context.dial(service, wait)
        return _wrap(stream_socket(stream))

    sock = context.call(open_bridged(), timeout=wait + 1.0)
    if isinstance(timeout, (int, float)):
        sock.settimeout(timeout)
    return sock
