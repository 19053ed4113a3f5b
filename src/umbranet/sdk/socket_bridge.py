"""Socket bridges: hand an overlay stream or listener to code that only knows sockets.

Most Python libraries (database drivers, ``asyncio.open_connection(sock=...)``, ``socketserver``,
uvicorn's ``fd=``) take a socket, not an `Stream`. A bridge gives them one: the SDK pumps bytes
between the overlay and one end of a local socket, the library uses the other end unchanged.

- `stream_socket(stream)` (``stream.as_socket()``): a connected socket from a ``socketpair``;
  what the app writes reaches the peer, what the peer sends is read from it, a half-close
  (``shutdown(SHUT_WR)``) passes through as EOF both ways.
- `ListenerBridge` (``listener.as_socket()``): a *listening* Unix socket in a fresh 0700
  directory; every stream the listener accepts arrives as a connection on it, and
  `ListenerBridge.peer_of` says which overlay identity is behind an accepted connection.

Neither opens a network port: the socketpair has no address, and the Unix socket lives in a
directory only this user can enter, so the service stays dark. The pump is `forward.relay`, so
resets behave as in the agent: a stream the peer resets closes the local socket at once (the app
reads EOF or ``ECONNRESET``: Unix sockets cannot carry a TCP reset), and a local socket closed
with an error resets the stream.

The pump runs on the event loop that owns the stream; the app's end is a blocking socket, for
use from another thread (or by asyncio, which makes it non-blocking itself). Reading or writing
it with blocking calls on the loop's own thread would wait for a pump that cannot run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import socket
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from umbranet.proto.e2e import PeerIdentity
from umbranet.sdk.forward import relay
from umbranet.sdk.stream import Stream

if TYPE_CHECKING:
    from umbranet.sdk.listener import Listener

__all__ = ["ListenerBridge", "listener_bridge", "stream_socket"]


class _Connection(Protocol):
    """A socket, or asyncio's wrapper of one (``writer.get_extra_info("socket")``)."""

    def getpeername(self) -> object: ...


logger = logging.getLogger(__name__)

# Pumps started by `stream_socket` that nothing else holds: a task with no reference can be
# garbage collected mid-flight.
_PUMPS: set[asyncio.Task[None]] = set()


def stream_socket(stream: Stream) -> socket.socket:
    """The app's end of a socket pair whose other end the SDK relays to `stream`.

    Call it on the stream's event loop; the pump runs until both directions ended or either
    side reset. Closing the returned socket ends our direction of the stream.
    """
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    task = loop.create_task(_pump(stream, ours), name=f"socket-bridge-{stream.circuit_id}")
    _PUMPS.add(task)
    task.add_done_callback(_PUMPS.discard)
    return theirs


async def _pump(stream: Stream, ours: socket.socket) -> None:
    try:
        reader, writer = await asyncio.open_connection(sock=ours)
    except OSError as exc:
        ours.close()
        stream.abort(f"the socket bridge could not start: {exc}")
        return
    outcome = await relay(stream, reader, writer)
    if outcome.reset_by:
        logger.debug(
            "socket bridge reset",
            extra={"service": stream.service, "code": outcome.code, "reason": outcome.reason},
        )


class ListenerBridge:
    """A listening Unix socket fed by an overlay listener; see the module docstring.

    Use as ``async with ListenerBridge(listener) as bridge`` (or `listener_bridge`), then give
    `socket` (or `path`) to the server library. Counters in `statistics()`: ``accepted``,
    ``relayed``, and ``refused`` with its reason code when the local server would not take a
    connection (the stream is reset with that reason, so the dialer sees why).
    """

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._dir = Path(tempfile.mkdtemp(prefix="umbra-bridge-"))  # mode 0700
        self.path = str(self._dir / "listen.sock")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.bind(self.path)
        self.socket.listen(128)
        self._peers: dict[str, PeerIdentity] = {}
        self._names = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._acceptor: asyncio.Task[None] | None = None
        self.counters: Counter[str] = Counter()

    def start(self) -> ListenerBridge:
        """Start taking streams from the listener (on the running loop)."""
        if self._acceptor is None:
            self._acceptor = asyncio.get_running_loop().create_task(self._accept_forever())
        return self

    def peer_of(self, connection: _Connection) -> PeerIdentity | None:
        """The overlay identity behind a connection accepted from `socket`, while it lasts."""
        try:
            name = connection.getpeername()
        except OSError:
            return None
        return self.identity_of(name) if isinstance(name, str) else None

    def identity_of(self, name: str) -> PeerIdentity | None:
        """`peer_of` by the connection's peer name (its ``getpeername()``)."""
        return self._peers.get(name)

    def statistics(self) -> dict[str, int]:
        return {"live": len(self._tasks), **self.counters}

    async def aclose(self) -> None:
        """Stop taking streams, reset the live ones, remove the socket and its directory."""
        tasks = [*self._tasks, *([self._acceptor] if self._acceptor else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.socket.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def stop_accepting(self) -> None:
        """Take no new streams and remove the socket; connections already made go on (as
        when a server closes its listening socket)."""
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._acceptor
        self.socket.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def __aenter__(self) -> ListenerBridge:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        async for stream in self._listener:
            self.counters["accepted"] += 1
            task = loop.create_task(self._carry(stream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # The listener closed: no new connections; the live ones keep their own sockets.
        self.socket.close()

    async def _carry(self, stream: Stream) -> None:
        # Each connection is bound to its own name, so the server side's getpeername() tells
        # which stream (and so which identity) it is; the file itself is not needed after.
        name = str(self._dir / f"c{next(self._names)}")
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Known before the connection exists: the server may ask as soon as it accepts.
        self._peers[name] = stream.peer
        try:
            try:
                client.bind(name)
                os.unlink(name)
                client.setblocking(False)
                await asyncio.get_running_loop().sock_connect(client, self.path)
                reader, writer = await asyncio.open_connection(sock=client)
            except OSError as exc:
                client.close()
                self._refuse(stream, "bridge_connect_failed", f"the local server refused: {exc}")
                return
            await relay(stream, reader, writer)
            self.counters["relayed"] += 1
        finally:
            del self._peers[name]

    def _refuse(self, stream: Stream, code: str, reason: str) -> None:
        self.counters[f"refused_{code}"] += 1
        logger.info(
            "socket bridge refused a stream",
            extra={"service": stream.service, "code": code, "reason": reason},
        )
        stream.abort(reason)


def listener_bridge(listener: Listener) -> ListenerBridge:
    """A started `ListenerBridge` for `listener` (call on the listener's event loop)."""
    return ListenerBridge(listener).start()
