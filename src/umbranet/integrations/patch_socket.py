"""The replacement socket functions and methods, and installing/removing them exactly.

Every replacement first asks the active `PatchRuntime` (``ACTIVE``); with no patch active, or
for an address the patch does not claim, it calls the original at once, so unconfigured
traffic (and code running after `uninstall`) behaves as if nothing were patched.

Patched on the ``socket`` module: ``getaddrinfo``, ``gethostbyname``. Patched on the
``socket.socket`` class, so every socket gets them (``ssl.SSLSocket`` and asyncio's loops
included, which call these methods): ``connect``, ``connect_ex``, ``bind``, ``listen``,
``accept``, ``close``, ``setsockopt``, ``getsockopt``, ``getpeername``, ``getsockname``.
``socket.create_connection`` needs no patch of its own: it resolves with ``getaddrinfo`` and
connects with ``socket.connect``.
"""

from __future__ import annotations

import socket
from typing import Any

from umbranet.integrations.patch_names import PEER_PLACEHOLDER, port_number
from umbranet.integrations.patch_runtime import PatchRuntime, inode_of

__all__ = ["ACTIVE", "install", "uninstall"]

ACTIVE: PatchRuntime | None = None

_MISSING = object()
_INET = (socket.AF_INET, socket.AF_INET6)
# The originals, saved at install and kept after uninstall: a reference someone took to a
# replacement while patched must still work once the patch is gone.
_ORIGINAL: dict[str, Any] = {}


def install(runtime: PatchRuntime) -> None:
    """Put the replacements in place (the caller holds the patch lock and checked none is)."""
    global ACTIVE  # noqa: PLW0603 (the one switch every replacement reads)
    for name in _MODULE_FUNCTIONS:
        _ORIGINAL[name] = socket.__dict__[name]
    for name in _METHODS:
        _ORIGINAL[f"socket.{name}"] = getattr(socket.socket, name)
        _ORIGINAL[f"own.{name}"] = socket.socket.__dict__.get(name, _MISSING)
    ACTIVE = runtime
    for name, function in _MODULE_FUNCTIONS.items():
        setattr(socket, name, function)
    for name, function in _METHODS.items():
        setattr(socket.socket, name, function)


def uninstall() -> PatchRuntime | None:
    """Restore exactly what was there: the class's own attributes back, inherited ones removed."""
    global ACTIVE
    runtime, ACTIVE = ACTIVE, None
    if runtime is None:
        return None
    for name in _MODULE_FUNCTIONS:
        setattr(socket, name, _ORIGINAL[name])
    for name in _METHODS:
        own = _ORIGINAL[f"own.{name}"]
        if own is _MISSING:
            delattr(socket.socket, name)
        else:
            setattr(socket.socket, name, own)
    return runtime


def _call(name: str, *args: Any) -> Any:
    return _ORIGINAL[name](*args)


# -- names -----------------------------------------------------------------------------------


def getaddrinfo(  # noqa: PLR0917 (socket.getaddrinfo's own signature)
    host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> Any:
    runtime = ACTIVE
    if runtime is not None and host is not None:
        name = host.decode() if isinstance(host, bytes) else str(host)
        try:
            number = port_number(port)
        except OSError:
            number = -1  # an unknown service name: let the real resolver say so
        if number >= 0 and runtime.book.answers_for(name, number):
            answer = runtime.book.resolve(
                name, number, family=family, type_=type, proto=proto, flags=flags
            )
            service = runtime.book.service_for(name, number)
            if runtime.doors is not None and service is not None:
                runtime.doors.ensure(runtime.book.placeholder(name), number, service)
            return answer
    return _call("getaddrinfo", host, port, family, type, proto, flags)


def gethostbyname(hostname: str) -> str:
    runtime = ACTIVE
    if runtime is not None and runtime.book.answers_for(hostname, 0):
        return runtime.book.placeholder(hostname)
    return str(_call("gethostbyname", hostname))


# -- dialing ---------------------------------------------------------------------------------


def _claimed(sock: socket.socket, address: Any) -> tuple[PatchRuntime, str] | None:
    runtime = ACTIVE
    if runtime is None or not isinstance(address, tuple) or len(address) < 2:
        return None
    if sock.family not in _INET or sock.type != socket.SOCK_STREAM:
        return None
    service = runtime.dial_target(address)
    return (runtime, service) if service is not None else None


def connect(self: socket.socket, address: Any) -> None:
    claimed = _claimed(self, address)
    if claimed is None:
        _call("socket.connect", self, address)
        return
    runtime, service = claimed
    runtime.dial_into(self, service, address)


def connect_ex(self: socket.socket, address: Any) -> int:
    try:
        claimed = _claimed(self, address)
        if claimed is None:
            return int(_call("socket.connect_ex", self, address))
        claimed[0].dial_into(self, claimed[1], address)
    except OSError as exc:
        return exc.errno or 5  # EIO when the error carries no number
    return 0


# -- hosting ---------------------------------------------------------------------------------


def bind(self: socket.socket, address: Any) -> None:
    runtime = ACTIVE
    if (
        runtime is not None
        and isinstance(address, tuple)
        and len(address) >= 2
        and self.family in _INET
        and self.type == socket.SOCK_STREAM
    ):
        service = runtime.host_target(address)
        if service is not None:
            runtime.bind_pending(self, service, address)  # nothing is bound in the kernel
            return
    _call("socket.bind", self, address)


def listen(self: socket.socket, *backlog: int) -> None:
    runtime = ACTIVE
    if (
        runtime is not None
        and runtime.pending
        and self.family in _INET
        and _call("socket.getsockname", self)[1] == 0  # bound by the patch, not the kernel
        and runtime.host_on(self, *backlog[:1] or (128,))
    ):
        return
    _call("socket.listen", self, *backlog)


def accept(self: socket.socket) -> tuple[socket.socket, Any]:
    runtime = ACTIVE
    conn, address = _call("socket.accept", self)
    if runtime is not None and runtime.hosted:
        inode = inode_of(self)
        hosted = runtime.hosted.get(inode) if inode is not None else None
        if hosted is not None:
            return conn, runtime.accepted(hosted, conn)
    return conn, address


def close(self: socket.socket) -> None:
    runtime = ACTIVE
    if runtime is None or not (runtime.bridged or runtime.hosted or runtime.pending):
        _call("socket.close", self)
        return
    inode = inode_of(self)
    _call("socket.close", self)
    if inode is not None and self.fileno() < 0:
        runtime.forget(inode)
        runtime.stop_hosting(inode)


# -- what a bridged socket answers -----------------------------------------------------------


def _is_bridged(sock: socket.socket) -> bool:
    """A socket that claims an IP family while the kernel socket behind it is a Unix one."""
    if sock.family not in _INET:
        return False
    try:
        domain = _call("socket.getsockopt", sock, socket.SOL_SOCKET, socket.SO_DOMAIN)
    except OSError:
        return False
    return bool(domain == socket.AF_UNIX)


def setsockopt(self: socket.socket, level: int, optname: int, *value: Any) -> None:
    try:
        _call("socket.setsockopt", self, level, optname, *value)
    except OSError:
        # TCP options (TCP_NODELAY, keepalive tuning) only tune a hop the bridge does not
        # have; clients set them on what they believe is TCP, so they are accepted.
        if level != socket.IPPROTO_TCP or not _is_bridged(self):
            raise


def getsockopt(self: socket.socket, level: int, optname: int, *buflen: int) -> Any:
    try:
        return _call("socket.getsockopt", self, level, optname, *buflen)
    except OSError:
        if level != socket.IPPROTO_TCP or not _is_bridged(self):
            raise
        return bytes(buflen[0]) if buflen else 0


def getpeername(self: socket.socket) -> Any:
    name = _call("socket.getpeername", self)
    if isinstance(name, (str, bytes)) and self.family in _INET:
        runtime = ACTIVE
        info = runtime.lookup(self) if runtime is not None else None
        if info is not None:
            return info.peer
        return (PEER_PLACEHOLDER, 0) if self.family == socket.AF_INET else ("::", 0, 0, 0)
    return name


def getsockname(self: socket.socket) -> Any:
    name = _call("socket.getsockname", self)
    runtime = ACTIVE
    if runtime is None or self.family not in _INET:
        return name
    # Ask the tables only for a socket that is ours for sure (a Unix socket behind an IP
    # family, or an IP socket the kernel never bound): a remembered inode may have been
    # reused by a socket that was dropped without close().
    if isinstance(name, (str, bytes)):
        inode = inode_of(self)
        hosted = runtime.hosted.get(inode) if inode is not None else None
        if hosted is not None:
            return hosted.address
        info = runtime.lookup(self)
        return info.local if info is not None else (PEER_PLACEHOLDER, 0)
    if runtime.pending and name[1] == 0:
        pending = runtime.pending.get(inode_of(self) or -1)
        if pending is not None:
            return pending[1]
    return name


_MODULE_FUNCTIONS = {"getaddrinfo": getaddrinfo, "gethostbyname": gethostbyname}
_METHODS = {
    "connect": connect,
    "connect_ex": connect_ex,
    "bind": bind,
    "listen": listen,
    "accept": accept,
    "close": close,
    "setsockopt": setsockopt,
    "getsockopt": getsockopt,
    "getpeername": getpeername,
    "getsockname": getsockname,
}
