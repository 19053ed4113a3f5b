"""Doors for clients that connect in C: a loopback listener at a placeholder address.

libpq (under psycopg) resolves through Python's ``getaddrinfo`` (psycopg 3 does that itself,
and the patch answers with a placeholder) but then connects in C, where no Python patch can
see it. With ``monkeypatch(..., native=True)``, handing out a placeholder for a name and port
also opens a *door*: a TCP listener on that placeholder address (127.85.x.y, loopback only)
whose connections are dialed to the service, as the agent does for a whole host.

A door is a real port, so it admits only this process: each connection's socket is looked up
in ``/proc/net/tcp`` (its inode) and must be one of ``/proc/self/fd``; anything else (another
user's process, another program of ours) is closed at once, logged and counted as
``refused_not_this_process``. Linux only; elsewhere the doors refuse everything.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
from typing import TYPE_CHECKING

from umbranet.sdk.forward import relay

if TYPE_CHECKING:
    from umbranet.integrations.patch_runtime import PatchRuntime

__all__ = ["Doors", "owned_by_this_process"]

logger = logging.getLogger("umbranet.integrations.monkeypatch")

DOOR_TIMEOUT = 10.0  # opening a door on the SDK's loop


def _proc_address(host: str, port: int) -> str:
    """(host, port) as /proc/net/tcp{,6} spells it: the address in host byte order, hex."""
    address = ipaddress.ip_address(host)
    if address.version == 4:
        return f"{struct.unpack('<I', address.packed)[0]:08X}:{port:04X}"
    words = struct.unpack("<4I", address.packed)
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"


def _inode_of_connection(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of the connected socket whose own address is `local`, peer `remote`."""
    wanted = (_proc_address(*local), _proc_address(*remote))
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if (fields[1], fields[2]) == wanted:
                        return int(fields[9])
        except OSError:
            continue
    return None


def owned_by_this_process(peer: tuple[str, int], door: tuple[str, int]) -> bool:
    """Whether the socket that connected from `peer` to `door` is one of our descriptors."""
    inode = _inode_of_connection(peer, door)
    if inode is None:
        return False
    target = f"socket:[{inode}]"
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == target:
                return True
    return False


class Doors:
    """The open doors of one patch, keyed by (placeholder, port)."""

    def __init__(self, runtime: PatchRuntime) -> None:
        self._runtime = runtime
        self._servers: dict[tuple[str, int], asyncio.Server] = {}
        self._opening = asyncio.Lock()

    def ensure(self, address: str, port: int, service: str) -> None:
        """Open the door for (address, port) -> service unless it is open (any thread)."""
        key = (address, port)
        if key in self._servers or port <= 0:
            return
        try:
            self._runtime.call(self._open(key, service), timeout=DOOR_TIMEOUT)
        except Exception as exc:  # the Python paths still work; only C clients miss out
            self._runtime.counters["door_failed"] += 1
            logger.info(
                "socket patch could not open a door",
                extra={"service": service, "code": "door_failed", "reason": str(exc)},
            )
            return

    async def _open(self, key: tuple[str, int], service: str) -> None:
        async with self._opening:  # two threads may resolve the same name at once
            if key in self._servers:
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                _socket.socket.bind(sock, key)  # not the patched bind: a door is never hosted
            except OSError:
                sock.close()
                raise

            async def admit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await self._admit(key, service, reader, writer)

            self._servers[key] = await asyncio.start_server(admit, sock=sock)
            self._runtime.counters["doors"] += 1

    async def _admit(
        self,
        key: tuple[str, int],
        service: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        counters = self._runtime.counters
        peer = writer.get_extra_info("peername")
        if not (isinstance(peer, tuple) and owned_by_this_process(peer[:2], key)):
            counters["refused_not_this_process"] += 1
            logger.info(
                "socket patch door refused a connection",
                extra={
                    "service": service,
                    "code": "not_this_process",
                    "reason": f"{peer} is not a socket of this process",
                },
            )
            writer.transport.abort()
            return
        try:
            stream = await self._runtime.context._context.dial(service, DOOR_TIMEOUT)
        except Exception as exc:
            counters["refused_dial_failed"] += 1
            logger.info(
                "socket patch dial failed",
                extra={"service": service, "code": "dial_failed", "reason": str(exc)},
            )
            writer.transport.abort()  # a reset, as from a server that is not there
            return
        counters["dialed_native"] += 1
        await relay(stream, reader, writer)

    def close(self) -> None:
        """Close every door (unpatching); connections through them go on."""
        servers, self._servers = list(self._servers.values()), {}

        async def close_all() -> None:
            for server in servers:
                server.close()

        if servers:
            with contextlib.suppress(Exception):
                self._runtime.call(close_all(), timeout=DOOR_TIMEOUT)

    def __len__(self) -> int:
        return len(self._servers)
