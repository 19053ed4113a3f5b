"""Router links accepted by the router's own acceptor ask for TCP_NODELAY, as the event
loop's transports do: without it Nagle holds a small frame (a CREDIT, a HANDSHAKE, a
one-byte reply) behind the peer's delayed ACK, tens of milliseconds per round trip. uvloop
sets it on accepted sockets by itself; the plain asyncio loop (the fallback without uvloop)
does not, so this runs on the plain loop."""

from __future__ import annotations

import asyncio
import socket

from tests.conftest import context, running_router
from umbranet.testing import LocalNetwork


def test_a_link_the_router_accepts_sends_small_frames_at_once(network: LocalNetwork) -> None:
    async def main() -> list[int]:
        async with running_router(network, "r1") as r1:
            client = context(network, "alice", "client")
            async with client:
                await client.connection(r1.address)
                return [
                    link.transport.get_extra_info("socket").getsockopt(
                        socket.IPPROTO_TCP, socket.TCP_NODELAY
                    )
                    for link in r1._links
                    if link.transport is not None
                ]

    flags = asyncio.run(asyncio.wait_for(main(), 30))
    assert flags and all(flags), flags
