"""TCP connections whose packets carry a firewall mark.

A device using an exit node routes every unmarked packet into its tunnel (`agent/tunplan.py`,
`route_through_exit`). The agent's own links to the underlay must not take that route: a
router link would reach the exit node as traffic no rule grants and be dropped there, and the
link to the router that relays the tunnel's datagrams would have to carry itself. Marking the
socket before it connects keeps every packet of the connection, the handshake included, on the
main routing table.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from ssl import SSLContext
from typing import TypeVar

_P = TypeVar("_P", bound=asyncio.BaseProtocol)


async def connect_marked(host: str, port: int, mark: int) -> socket.socket:
    """A non-blocking TCP socket connected to `host`:`port`, every packet marked with `mark`
    (SO_MARK: needs CAP_NET_ADMIN, which the agent has in network mode). Addresses are tried
    in resolver order; the last error is raised when none connects."""
    loop = asyncio.get_running_loop()
    addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    failure: OSError = OSError(f"{host}:{port}: no address")
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise failure


async def create_connection(
    factory: Callable[[], _P],
    host: str,
    port: int,
    *,
    ssl: SSLContext | None,
    server_hostname: str | None,
    mark: int | None,
) -> tuple[asyncio.Transport, _P]:
    """`loop.create_connection`, on a socket marked with `mark` unless it is None."""
    loop = asyncio.get_running_loop()
    if mark is None:
        return await loop.create_connection(
            factory, host, port, ssl=ssl, server_hostname=server_hostname
        )
    sock = await connect_marked(host, port, mark)
    try:
        return await loop.create_connection(
            factory, sock=sock, ssl=ssl, server_hostname=server_hostname
        )
    except BaseException:
        sock.close()
        raise
