"""The socket patch's live state: dialing into an app's socket and hosting on a bound one.

Both halves rest on one move: the app's own socket object keeps its identity (the object, its
file descriptor number, its claimed ``AF_INET`` family and its timeout), while ``os.dup2`` puts
a socket bridge behind that descriptor number.

- **Dial** (`PatchRuntime.dial_into`): a socketpair; the SDK pumps one end to the overlay
  stream, the other end replaces the app's descriptor. A blocking (or timeout) socket waits
  for the dial, so a refusal is a ``ConnectionRefusedError`` from ``connect`` as with TCP. A
  non-blocking socket (asyncio) must not wait on the app's event loop: ``connect`` succeeds at
  once, the dial runs on the SDK's loop, bytes written meanwhile wait in the socket buffer, and
  a refused dial shows as a closed connection (EOF) on the first read.
- **Host** (`PatchRuntime.host_on`): ``bind`` to a configured address binds nothing in the
  kernel; ``listen`` binds the service at the routers and puts a `ListenerBridge`'s listening
  Unix socket (in a private 0700 directory) behind the descriptor, so ``accept`` returns the
  overlay's streams. No TCP port is ever opened.

The sockets behind the descriptors are Unix sockets, so the patched methods in
`patch_socket` answer ``getpeername``/``getsockname`` with the addresses the app expects (kept
here by socket inode, which survives ``detach``/``dup``) and accept TCP-only options.
"""

from __future__ import annotations

import _socket
import asyncio
import concurrent.futures
import errno
import logging
import os
import socket
import threading
from collections import Counter, OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from umbranet.integrations.patch_names import PEER_PLACEHOLDER, PLACEHOLDER_NETWORK, AddressBook
from umbranet.integrations.patch_native import Doors
from umbranet.proto.e2e import PeerIdentity
from umbranet.sdk.forward import relay
from umbranet.sdk.socket_bridge import ListenerBridge, listener_bridge
from umbranet.sdk.stream import Stream

if TYPE_CHECKING:
    from umbranet.sdk.blocking import BlockingContext
    from umbranet.sdk.listener import Listener

__all__ = ["Bridged", "Hosted", "PatchRuntime", "inode_of"]

logger = logging.getLogger("umbranet.integrations.monkeypatch")

DIAL_TIMEOUT = 30.0  # a blocking socket with no timeout still gets a bounded dial
HOST_TIMEOUT = 30.0  # binding the service at the routers
# Remembered addresses of bridged sockets: entries leave when the app closes the socket; the
# bound only matters for sockets that are dropped without close().
_MAX_BRIDGED = 65536
LOCAL_PLACEHOLDER = str(PLACEHOLDER_NETWORK.network_address)

Address = tuple[object, ...]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Bridged:
    """What a bridged socket answers: its service, addresses, and (hosted) who the peer is."""

    service: str
    peer: Address
    local: Address
    bridge: ListenerBridge | None = None
    bridge_name: str = ""  # the accepted connection's name at the bridge

    @property
    def identity(self) -> PeerIdentity | None:
        # Looked up when asked: the bridge learns the name's identity just after the app may
        # already have accepted the connection, and before any byte of it arrives.
        if self.bridge is None:
            return None
        return self.bridge.identity_of(self.bridge_name)


@dataclass(slots=True)
class Hosted:
    """A hosted (listening) socket's overlay side."""

    service: str
    address: Address
    listener: Listener
    bridge: ListenerBridge


def inode_of(sock: socket.socket) -> int | None:
    """The kernel socket's inode (the same for every descriptor of it), or None if closed."""
    fd = sock.fileno()
    if fd < 0:
        return None
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


class PatchRuntime:
    """One active patch: its configuration, counters, and the sockets it bridged."""

    def __init__(
        self,
        context: BlockingContext,
        book: AddressBook,
        host: dict[tuple[str, int], str],
        *,
        native: bool = False,
    ) -> None:
        self.context = context
        self.book = book
        self.host = host
        self.counters: Counter[str] = Counter()
        self.bridged: OrderedDict[int, Bridged] = OrderedDict()
        self.pending: dict[int, tuple[str, Address]] = {}
        self.hosted: dict[int, Hosted] = {}
        self._pumps: set[concurrent.futures.Future[None]] = set()
        self._lock = threading.Lock()
        self.doors = Doors(self) if native else None

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coroutine` on the SDK's loop and wait, from any thread but that loop's own
        (there the wait would block the very loop that must do the work)."""
        if threading.current_thread() is self.context._thread:
            coroutine.close()
            raise RuntimeError("umbra: a blocking socket call on the SDK's own loop thread")
        return self.context.call(coroutine, timeout=timeout)

    # -- decisions ------------------------------------------------------------------------

    def dial_target(self, address: tuple[object, ...]) -> str | None:
        """The service a connect to `address` goes to; None for the network; raises a refusal
        for a placeholder with no service at that port (the network has nothing there)."""
        host, port = str(address[0]), int(str(address[1]))
        name = self.book.name_of(host)
        if name is None and self.book.is_placeholder(host):
            self.refuse("unknown_placeholder", f"{host} was not handed out by this patch")
        if name is not None:
            service = self.book.service_for(name, port)
            if service is None:
                self.refuse("port_not_configured", f"{name}:{port} is not a configured pair")
            return service
        return self.book.service_for(host, port)

    def host_target(self, address: tuple[object, ...]) -> str | None:
        host, port = str(address[0]).lower(), int(str(address[1]))
        return self.host.get((host, port)) or self.host.get(("*", port))

    def refuse(self, code: str, reason: str) -> None:
        self.counters[f"refused_{code}"] += 1
        logger.info("socket patch refused a connect", extra={"code": code, "reason": reason})
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"umbra: {reason} ({code})")

    # -- dialing --------------------------------------------------------------------------

    def dial_into(self, sock: socket.socket, service: str, address: Address) -> None:
        """Make `sock` a connection to `service` (see the module docstring)."""
        timeout = sock.gettimeout()
        ours, theirs = socket.socketpair()
        try:
            if timeout == 0.0:
                self._start(self._dial_and_pump(service, ours, DIAL_TIMEOUT))
            else:
                stream = self._dial_now(service, timeout or DIAL_TIMEOUT, ours)
                self._start(self._pump(stream, ours))
            os.dup2(theirs.fileno(), sock.fileno(), inheritable=False)
        finally:
            theirs.close()
        sock.settimeout(timeout)  # the descriptor's O_NONBLOCK came with the bridge
        self.counters["dialed"] += 1
        self.remember(sock, Bridged(service, address, _local_like(address)))

    def _dial_now(self, service: str, wait: float, ours: socket.socket) -> Stream:
        try:
            return self.call(self.context._context.dial(service, wait), timeout=wait + 1)
        except (TimeoutError, concurrent.futures.TimeoutError):
            ours.close()
            self.counters["refused_dial_timeout"] += 1
            raise TimeoutError(errno.ETIMEDOUT, f"umbra: dial {service} timed out") from None
        except Exception as exc:
            ours.close()
            self.counters["refused_dial_failed"] += 1
            logger.info(
                "socket patch dial failed",
                extra={"service": service, "code": "dial_failed", "reason": str(exc)},
            )
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"umbra: dial {service} failed: {exc}"
            ) from exc

    def _start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.context._loop)
        with self._lock:
            self._pumps.add(future)
        future.add_done_callback(self._pumps.discard)

    async def _dial_and_pump(self, service: str, ours: socket.socket, wait: float) -> None:
        try:
            stream = await self.context._context.dial(service, wait)
        except Exception as exc:
            # The app already holds a "connected" socket: closing ours is its EOF.
            self.counters["refused_dial_failed"] += 1
            logger.info(
                "socket patch dial failed",
                extra={"service": service, "code": "dial_failed", "reason": str(exc)},
            )
            ours.close()
            return
        await self._pump(stream, ours)

    async def _pump(self, stream: Stream, ours: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=ours)
        except OSError as exc:
            ours.close()
            stream.abort(f"the socket patch could not start: {exc}")
            return
        await relay(stream, reader, writer)

    # -- hosting --------------------------------------------------------------------------

    def bind_pending(self, sock: socket.socket, service: str, address: Address) -> None:
        inode = inode_of(sock)
        if inode is not None:
            self.pending[inode] = (service, address)

    def host_on(self, sock: socket.socket, backlog: int) -> bool:
        """If `sock` was bound to a hosted address, serve its service on it; else False."""
        inode = inode_of(sock)
        entry = self.pending.pop(inode, None) if inode is not None else None
        if entry is None:
            return False
        service, address = entry

        async def start() -> tuple[Listener, ListenerBridge]:
            listener = await self.context._context.listen(service, backlog).start()
            return listener, listener_bridge(listener)

        try:
            listener, bridge = self.call(start(), timeout=HOST_TIMEOUT)
        except Exception as exc:
            self.counters["refused_host_failed"] += 1
            logger.info(
                "socket patch could not host",
                extra={"service": service, "code": "host_failed", "reason": str(exc)},
            )
            raise PermissionError(errno.EACCES, f"umbra: cannot host {service}: {exc}") from exc
        timeout = sock.gettimeout()
        os.dup2(bridge.socket.fileno(), sock.fileno(), inheritable=False)
        sock.settimeout(timeout)
        self.hosted[os.fstat(sock.fileno()).st_ino] = Hosted(service, address, listener, bridge)
        self.counters["hosted"] += 1
        return True

    def accepted(self, listening: Hosted, conn: socket.socket) -> Address:
        """Remember who is behind a connection accepted from a hosted socket; its address."""
        # The bridge's name for it, read through a Unix socket object: the app's object sizes
        # the address buffer for the family it claims (AF_INET), which truncates a path.
        with socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno())
        ) as unix:
            name = _socket.socket.getpeername(unix)
        self.counters["accepted"] += 1
        number = self.counters["accepted"] % 65535 + 1
        peer: Address = (PEER_PLACEHOLDER, number)
        if len(listening.address) == 4:
            peer = (f"::ffff:{PEER_PLACEHOLDER}", number, 0, 0)
        bridged = Bridged(listening.service, peer, listening.address, listening.bridge, str(name))
        self.remember(conn, bridged)
        return peer

    def stop_hosting(self, inode: int, wait: float | None = None) -> None:
        """The app closed a hosted socket: unbind the service; live connections go on."""
        hosted = self.hosted.pop(inode, None)
        if hosted is None:
            return

        async def stop() -> None:
            await hosted.listener.close()
            await hosted.bridge.stop_accepting()

        future = asyncio.run_coroutine_threadsafe(stop(), self.context._loop)
        if wait is not None:
            concurrent.futures.wait([future], timeout=wait)

    def close(self) -> None:
        """Unpatching: stop every hosted service; dialed connections stay as they are."""
        self.pending.clear()
        if self.doors is not None:
            self.doors.close()
        for inode in list(self.hosted):
            self.stop_hosting(inode, wait=5.0)

    # -- addresses of bridged sockets -----------------------------------------------------

    def remember(self, sock: socket.socket, info: Bridged) -> None:
        inode = inode_of(sock)
        if inode is None:
            return
        with self._lock:
            self.bridged[inode] = info
            while len(self.bridged) > _MAX_BRIDGED:
                self.bridged.popitem(last=False)

    def lookup(self, sock: socket.socket) -> Bridged | None:
        inode = inode_of(sock)
        return self.bridged.get(inode) if inode is not None else None

    def forget(self, inode: int) -> None:
        """The app closed a socket: drop what was remembered about it."""
        with self._lock:
            self.bridged.pop(inode, None)
        self.pending.pop(inode, None)

    def statistics(self) -> dict[str, int]:
        return {
            "hosting": len(self.hosted),
            "doors_open": len(self.doors) if self.doors is not None else 0,
            "pumps": len(self._pumps),
            **self.counters,
        }


def _local_like(address: Address) -> Address:
    if len(address) == 4:
        return (f"::ffff:{LOCAL_PLACEHOLDER}", 0, 0, 0)
    return (LOCAL_PLACEHOLDER, 0)
