"""A router that goes silent (a frozen process, a dropped NAT mapping) is noticed by the
endpoints' keepalive, not by the kernel: streams through it move to another router with
every byte once and in order (or, with moving off, end with `peer_gone`), and the next dial
goes through another router. Real TLS links on loopback; short keepalive timers."""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Any

import pytest

from tests.conftest import echo_forever, running_router
from umbranet.proto.link import LinkTimers
from umbranet.router import Router
from umbranet.sdk import Context, StreamReset
from umbranet.testing import LocalNetwork

TIMERS = LinkTimers(ping_interval=0.2, silent_after=0.8)


def _freeze(router: Router) -> None:
    """The router stops accepting, reading, writing and keeping time, without closing any
    connection: to its peers it looks like a hung process or a black-holed path."""
    router.stop_accepting()
    router._flush = lambda: None  # type: ignore[method-assign]  # it writes nothing any more
    for link in list(router._links):
        assert link.transport is not None
        link.transport.pause_reading()
        router._timers[link].cancel()


def _context(
    network: LocalNetwork, name: str, attribute: str, resume_deadline: float = 0.0
) -> Context:
    identity = network.identity(name, attributes=(attribute,))
    return Context(
        identity,
        control=network.control,
        renew=False,
        link_timers=TIMERS,
        resume_deadline=resume_deadline,
    )


def test_a_stream_moves_to_another_router_when_its_router_goes_silent(
    network: LocalNetwork, arun: Any
) -> None:
    """Mid-transfer, the router under a stream freezes: the stream pauses and resumes
    through the other router; what the application reads back is exactly what it sent."""
    size = 8 << 20
    data = random.Random(11).randbytes(size)

    async def main() -> None:
        async with running_router(network, "r1") as r1, running_router(network, "r2"):
            host = _context(network, "web", "server", resume_deadline=20.0)
            client = _context(network, "alice", "client", resume_deadline=20.0)
            async with host, client:
                listener = await host.listen("echo").start()
                assert sorted(listener.bound_routers) == ["r1", "r2"]
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                stream = await client.dial("echo")
                before = stream.get_extra_info("router")
                assert before == "r1"

                async def send() -> None:
                    for offset in range(0, size, 1 << 16):
                        stream.write(data[offset : offset + (1 << 16)])
                        await stream.drain()
                        if offset == size // 4:
                            _freeze(r1)
                    stream.write_eof()

                sender = asyncio.get_running_loop().create_task(send())
                echoed = await asyncio.wait_for(stream.read(), 30)
                await sender
                after = stream.get_extra_info("router")
                moves = stream.get_extra_info("resumes")
                print(f"path before: {before}, after: {after}, moves: {moves}")
                assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(data).hexdigest()
                assert after == "r2" and stream.get_extra_info("resumes") == 1
                assert client.statistics()["sessions"]["sessions_resumed"] == 1
                assert host.statistics()["sessions"]["resumes_accepted"] == 1
                server.cancel()

    arun(main())


def test_a_silent_router_is_detected_and_dials_fail_over(network: LocalNetwork, arun: Any) -> None:
    async def main() -> None:
        async with running_router(network, "r1") as r1, running_router(network, "r2"):
            host, client = _context(network, "web", "server"), _context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                assert sorted(listener.bound_routers) == ["r1", "r2"]
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                stream = await client.dial("echo")
                assert stream.get_extra_info("router") == "r1"
                stream.write(b"before")
                assert await stream.readexactly(6) == b"before"

                _freeze(r1)
                started = asyncio.get_running_loop().time()
                with pytest.raises(StreamReset) as info:
                    await asyncio.wait_for(stream.read(), 30)
                noticed = asyncio.get_running_loop().time() - started
                assert info.value.code == "peer_gone"
                print(f"silent router noticed in {noticed:.2f}s, deadline {TIMERS.silent_after}s")

                again = await client.dial("echo")
                assert again.get_extra_info("router") == "r2"
                again.write(b"after")
                again.write_eof()
                assert await again.read() == b"after"
                assert client.statistics()["counters"]["router_links_lost"] >= 1
                server.cancel()

    arun(main())
