"""The router's TLS accept path under connections that never finish their handshake: each
source may hold only a few handshakes in progress, handshakes have a deadline, and links from
other sources are made meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from tests.conftest import context, echo_forever
from umbranet.aio.acceptor import AcceptLimits
from umbranet.router import Router, RouterConfig
from umbranet.testing import LocalNetwork, eventually


def test_idle_connections_from_one_source_cannot_exhaust_the_listener(
    network: LocalNetwork, arun: Any
) -> None:
    async def main() -> None:
        identity = network.identity("r1", kind="router")
        limits = AcceptLimits(per_source=16, total=64, handshake_timeout=2.0)
        async with Router(RouterConfig(identity, port=0, accept=limits)) as router:
            network.routers.append(router.address)
            host, port = router.address.rsplit(":", 1)
            idle: list[socket.socket] = []
            try:
                for _ in range(100):  # an attacker at 127.0.0.2 connects and says nothing
                    sock = socket.socket()
                    sock.bind(("127.0.0.2", 0))
                    sock.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        sock.connect((host, int(port)))
                    idle.append(sock)
                counters = router.switch.counters
                await eventually(lambda: counters["accept_source_limit"] >= 84, within=10)
                # Meanwhile a client from another address gets a link and a stream.
                web = context(network, "web", "server")
                alice = context(network, "alice", "client")
                async with web, alice:
                    listener = await web.listen("echo").start()
                    server = asyncio.get_running_loop().create_task(echo_forever(listener))
                    stream = await alice.dial("echo")
                    stream.write(b"still served")
                    stream.write_eof()
                    assert await stream.read() == b"still served"
                    server.cancel()
                # The idle ones run out of time and are counted.
                await eventually(lambda: counters["tls_handshake_timeout"] >= 16, within=10)
                assert counters["accept_source_limit"] >= 84
            finally:
                for sock in idle:
                    sock.close()

    arun(main())
