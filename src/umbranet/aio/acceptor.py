"""A TLS listener that cannot be exhausted by connections that never finish their handshake.

`loop.create_server` accepts whatever arrives and runs every TLS handshake to its timeout;
a thousand idle TCP connections hold a thousand file descriptors and fresh links fail.
This acceptor accepts in a loop of its own and admits a connection to the TLS handshake
only while its source address has fewer than `per_source` handshakes in progress and the
router fewer than `total`; anything else is closed at once and counted. Handshakes have a
deadline. When the process runs out of file descriptors (EMFILE/ENFILE), accepting pauses
briefly instead of spinning, and resumes: the links already up never notice. Accepting is a
plain reader callback (a bounded batch per loop turn), not a task: nothing to cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AcceptLimits", "Acceptor"]

log = logging.getLogger("umbranet.router")

_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_LINGER_RESET = struct.pack("ii", 1, 0)
ACCEPTS_PER_TURN = 64


@dataclass(frozen=True, slots=True)
class AcceptLimits:
    """How many TLS handshakes may be in progress, and for how long."""

    per_source: int = 64
    total: int = 1024
    handshake_timeout: float = 10.0
    fd_backoff: float = 0.1


class Acceptor:
    """Accepts TCP connections on `sock` and hands finished TLS connections to `factory`."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext,
        limits: AcceptLimits,
        count: Callable[[str], None],
    ) -> None:
        self._sock = sock
        self._factory = factory
        self._ssl = ssl_context
        self.limits = limits
        self._count = count
        self._pending: Counter[str] = Counter()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._resume: asyncio.TimerHandle | None = None

    @classmethod
    def bind(cls, host: str, port: int, backlog: int = 1024) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
        return sock

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def pending(self) -> int:
        """TLS handshakes in progress."""
        return sum(self._pending.values())

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._accept_ready)
        self._reading = True

    def close(self) -> None:
        """Stop accepting (links already made are not touched)."""
        if self._sock.fileno() < 0:
            return
        self._pause()
        if self._resume is not None:
            self._resume.cancel()
        for task in list(self._handshakes):
            task.cancel()
        with contextlib.suppress(OSError):
            self._sock.close()

    def _accept_ready(self) -> None:
        # A bounded number per loop turn, so a connection storm cannot starve the links.
        for _ in range(ACCEPTS_PER_TURN):
            try:
                conn, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self._count("accept_out_of_fds")
                    log.warning("accept paused: %s", exc.strerror)
                    self._pause()
                    self._resume = self._loop.call_later(self.limits.fd_backoff, self._unpause)
                else:
                    log.warning("accept failed: %s", exc)
                return
            conn.setblocking(False)
            # Links carry small frames (CREDIT, HANDSHAKE, one-byte replies): without this,
            # Nagle holds them behind the peer's delayed ACK (tens of ms). The loop's own
            # transports set it; a socket accepted here must ask for it.
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            source = str(address[0])
            if self._pending[source] >= self.limits.per_source:
                self._refuse(conn, "accept_source_limit")
                continue
            if self.pending >= self.limits.total:
                self._refuse(conn, "accept_total_limit")
                continue
            self._pending[source] += 1
            task = self._loop.create_task(self._handshake(conn, source))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def _unpause(self) -> None:
        self._resume = None
        if not self._reading and self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._accept_ready)
            self._reading = True

    async def _handshake(self, conn: socket.socket, source: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._factory,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self.limits.handshake_timeout,
            )
        except (TimeoutError, ConnectionAbortedError):
            self._count("tls_handshake_timeout")
            conn.close()
        except (OSError, ssl.SSLError, EOFError):
            # Refused handshakes are counted by the TLS object hook (`tls_handshake_failed`).
            conn.close()
        finally:
            left = self._pending[source] - 1
            if left > 0:
                self._pending[source] = left
            else:
                del self._pending[source]

    def _refuse(self, conn: socket.socket, code: str) -> None:
        self._count(code)
        with contextlib.suppress(OSError):
            # RST rather than FIN: the peer learns at once, and no TIME_WAIT is left here.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        conn.close()
