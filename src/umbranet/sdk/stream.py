"""Stream: one end of a circuit, shaped like asyncio's StreamReader and StreamWriter together.

`read`/`readexactly`/`readuntil` wait for plaintext; `write` queues and `drain` waits for the
peer's credit and the link; `write_eof` half-closes; `close` ends our side and discards what
the peer still sends; `abort` resets. Bytes arrive in order and complete, or the stream
raises StreamReset with the code and reason it ended with.

When a router on the path dies the stream pauses (reads wait, writes queue until `drain`
holds the writer back) while its session moves to another path; every byte still arrives
once and in order. No path within the context's resume deadline: StreamReset
`resume_timeout`.

`read` returns b"" (end of data) only after the peer's sealed FIN. A circuit that ended any
other way (a RESET from the network, even one that says "no_error", a sealed abort, a local
reset) makes `read` raise once the bytes that did arrive were read: a truncated stream is
never mistaken for a complete one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from umbranet.proto.circuit import Circuit, State
from umbranet.proto.e2e import PeerIdentity
from umbranet.sdk.errors import DialError, StreamReset
from umbranet.wire import ErrorCode

if TYPE_CHECKING:
    from umbranet.sdk.connection import RouterConnection

# drain() returns once at most this much is queued beyond the peer's window.
_HIGH_WATER = 256 * 1024
# An enum member as a module constant: the interpreter specialises a global lookup, not
# an attribute of a class (read after every stream operation).
_CLOSED = State.CLOSED


class Stream:
    """A bidirectional, end-to-end encrypted byte stream to one peer identity."""

    def __init__(self, connection: RouterConnection, circuit: Circuit, service: str) -> None:
        self._connection = connection
        self._circuit = circuit
        self.service = service
        self._waiter: asyncio.Future[None] | None = None
        self._closing = False
        self._loop = asyncio.get_running_loop()  # looked up once: each lookup is a getpid()
        self._closed: asyncio.Future[None] | None = None  # made by the first `wait_closed`
        # A refused in-session open being replaced by a new dial: writes wait in `_held`.
        self._replacing: asyncio.Task[None] | None = None
        self._held: list[bytes] = []
        self._held_eof = False
        self._open_error: DialError | None = None

    # -- identity -----------------------------------------------------------------------

    @property
    def peer(self) -> PeerIdentity:
        """The identity on the other end, proven by its certificate and ticket."""
        assert self._circuit.peer is not None
        return self._circuit.peer

    @property
    def circuit_id(self) -> int:
        return self._circuit.id

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """asyncio-style extras: ``peer``, ``service``, ``router``, ``resumes``, ``in_session``
        (the stream opened inside an existing end-to-end session: no handshake)."""
        extras = {
            "peer": self.peer,
            "service": self.service,
            "router": self._connection.name,
            "resumes": self._circuit.resumes,
            "in_session": self._circuit.in_session,
        }
        return extras.get(name, default)

    # -- reading ------------------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all until EOF if n < 0); b"" at EOF."""
        if n == 0:
            return b""
        if n < 0:
            parts = []
            while chunk := await self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        while (data := self.read_nowait(n)) is None:
            # `_wait`, inline: a read that waits runs this once per round trip.
            if self._circuit.deferred is not None:  # nothing to carry: the OPEN leaves now
                self._connection.flush(self._circuit)
            await self.wake_waiter()
        return data

    def read_nowait(self, n: int) -> bytes | None:
        """Up to `n` bytes already received, b"" at EOF, or None if a read would wait.

        The unfiltered stream only: a subclass that filters `read` is read through `read`.
        """
        circuit = self._circuit
        if n <= 0:
            return b""
        if not circuit.readable_bytes:
            if self._replacing is not None:
                return None
            if circuit.at_eof:
                if not circuit.remote_fin:
                    self._raise_closed()
                return b""
            return None
        data = circuit.take(n)
        if len(data) < n and circuit.readable_bytes:
            parts, have = [data], len(data)
            while have < n and circuit.readable_bytes:
                chunk = circuit.take(n - have)
                parts.append(chunk)
                have += len(chunk)
            data = b"".join(parts)
        self._connection.flush(circuit)
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes, or asyncio.IncompleteReadError at EOF."""
        parts: list[bytes] = []
        have = 0
        while have < n:
            chunk = await self.read(n - have)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    async def readuntil(self, separator: bytes = b"\n", limit: int = 65536) -> bytes:
        """Bytes up to and including `separator` (asyncio semantics, bounded by `limit`)."""
        buffer = b""
        while True:
            index = buffer.find(separator)
            if index >= 0:
                end = index + len(separator)
                self._unread(buffer[end:])
                return buffer[:end]
            if len(buffer) > limit:
                raise asyncio.LimitOverrunError("separator not found within limit", len(buffer))
            chunk = await self.read(65536)
            if not chunk:
                raise asyncio.IncompleteReadError(buffer, None)
            buffer += chunk

    async def readline(self) -> bytes:
        """One line including b"\\n", or what is left at EOF."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial

    def at_eof(self) -> bool:
        return self._circuit.at_eof

    @property
    def open_pending(self) -> bool:
        """Its OPEN has not left yet: a 0-RTT dial waits for the first write to carry it
        (or the first read that must wait, or a short cork delay)."""
        return self._circuit.deferred is not None

    # -- writing ------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes for the peer (sent as credit allows; call `drain`)."""
        if self._open_error is not None or self._circuit.error is not None:
            self._raise_if_reset()
        data = data if isinstance(data, bytes) else bytes(data)
        if self._replacing is not None:
            self._held.append(data)
            return
        self._circuit.write(data)
        self._connection.flush(self._circuit)

    def writelines(self, lines: list[bytes]) -> None:
        self.write(b"".join(lines))

    def must_drain(self) -> bool:
        """Whether `drain` would wait (or raise): queue over the mark, link paused, reset."""
        return (
            self._circuit.unsent_bytes > _HIGH_WATER
            or self._replacing is not None
            or self._circuit.error is not None
            or self._connection.link_blocked() is not None
        )

    async def drain(self) -> None:
        """Wait until the queue is short and the link accepts writes."""
        if self._replacing is not None:  # writes are held meanwhile: hold the writer too
            await asyncio.shield(self._replacing)
        circuit = self._circuit
        while circuit.unsent_bytes > _HIGH_WATER:
            self._raise_if_reset()
            await self._wait()
        if self._open_error is not None or circuit.error is not None:
            self._raise_if_reset()
        # No coroutine on the common path: the link almost always accepts writes.
        blocked = self._connection.link_blocked()
        if blocked is not None:
            await asyncio.shield(blocked)

    def write_eof(self) -> None:
        """End our direction after what is queued (the peer reads EOF)."""
        if self._replacing is not None:
            self._held_eof = True
        elif self._circuit.state is not _CLOSED:
            self._circuit.write_eof()
            self._connection.flush(self._circuit)

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        """End our direction; whatever the peer still sends is discarded."""
        self._closing = True
        self.write_eof()
        self._discard_inbound()

    def abort(self, reason: str = "aborted by the application") -> None:
        """Reset the circuit at once; the peer sees CANCELLED (sealed, so it can tell this
        abort from one a router forged, when the window had room for it)."""
        self._circuit.reset(ErrorCode.CANCELLED, reason)
        self._connection.flush(self._circuit)
        self.notify()

    def is_closing(self) -> bool:
        return self._closing or self._circuit.state is _CLOSED

    async def wait_closed(self) -> None:
        """Wait until both directions ended (or the stream was reset)."""
        if self._closed is None:
            self._closed = self._loop.create_future()
            if self._is_closed():
                self._closed.set_result(None)
        await asyncio.shield(self._closed)

    def as_socket(self) -> socket.socket:
        """A connected local socket relayed to this stream, for libraries that take a socket
        (see `umbranet.sdk.socket_bridge`); use it from another thread or through asyncio."""
        from umbranet.sdk.socket_bridge import stream_socket

        return stream_socket(self)

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._circuit.state is not _CLOSED:
            self.close()

    # -- for the connection ---------------------------------------------------------------

    def notify(self) -> None:
        """Wake whoever waits on this stream; called after the circuit changed."""
        if self._closing:
            self._discard_inbound()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        closed = self._closed
        if closed is not None and not closed.done() and self._is_closed():
            closed.set_result(None)

    def _is_closed(self) -> bool:
        """Both directions ended for good (not a refused open being dialed again)."""
        return self._circuit.state is _CLOSED and self._replacing is None

    def moved_to(self, connection: RouterConnection) -> None:
        """The stream's session resumed on another router link (see `sdk/moves.py`)."""
        self._connection = connection

    def open_failed(self, error: DialError) -> None:
        """Its in-session open was refused for good: reads and writes raise `error`."""
        self._open_error = error
        self.notify()

    def replace_with(self, dialing: Coroutine[Any, Any, Stream]) -> None:
        """Its in-session open was refused in a way a new dial may fix (the host forgot
        the session, the ticket went stale, the router has no way there): carry on over the
        stream `dialing` yields, every byte written so far sent again on it."""
        self._replacing = self._loop.create_task(self._replace(dialing))

    async def _replace(self, dialing: Coroutine[Any, Any, Stream]) -> None:
        data, fin = self._circuit.unopened()
        try:
            new = await dialing
        except DialError as exc:
            self._open_error = exc
        else:
            circuit = self._circuit = new._circuit
            self._connection = new._connection
            self._connection.adopt(self, circuit)
            data = b"".join([data, *self._held])
            if data:
                circuit.write(data)
            if fin or self._held_eof:
                circuit.write_eof()
            self._connection.flush(circuit)
        finally:
            self._replacing = None
            self._held.clear()
            self.notify()

    # -- internals ------------------------------------------------------------------------

    def wake_waiter(self) -> asyncio.Future[None]:
        """A future resolved the next time the circuit changes (data, credit, end)."""
        if self._waiter is None or self._waiter.done():
            self._waiter = self._loop.create_future()
        return self._waiter

    async def _wait(self) -> None:
        if self._circuit.deferred is not None:  # nothing to carry: the OPEN leaves now
            self._connection.flush(self._circuit)
        await self.wake_waiter()

    def _raise_if_reset(self) -> None:
        if self._open_error is not None:
            raise self._open_error
        if self._replacing is not None:
            return
        error = self._circuit.error
        if error is not None and not error.clean:
            raise StreamReset.from_code(error.code, error.reason, error.authenticated)

    def _raise_closed(self) -> None:
        """The circuit ended before the peer's FIN: always an error, whatever it claims."""
        if self._open_error is not None:
            raise self._open_error
        error = self._circuit.error
        if error is None:
            raise StreamReset("closed", "the stream ended before the peer's end of data")
        raise StreamReset.from_code(error.code, error.reason, error.authenticated)

    def _unread(self, data: bytes) -> None:
        self._circuit.push_back(data)

    def _discard_inbound(self) -> None:
        circuit = self._circuit
        while circuit.readable_bytes:
            circuit.take(1 << 20)
        self._connection.flush(circuit)
