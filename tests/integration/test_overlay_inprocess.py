"""SDK -> router -> SDK in one process over real loopback TLS: data, identities, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from tests.conftest import context, echo_forever, running_router
from umbranet.sdk import DialError
from umbranet.testing import LocalNetwork


async def _roundtrip(network: LocalNetwork, size: int) -> tuple[str, str, str]:
    async with running_router(network):
        host = context(network, "web", "server")
        client = context(network, "alice", "client")
        async with host, client:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            stream = await client.dial("echo")
            payload = os.urandom(size)

            async def send() -> None:
                for i in range(0, size, 100_000):
                    stream.write(payload[i : i + 100_000])
                    await stream.drain()
                stream.write_eof()

            sender = asyncio.get_running_loop().create_task(send())
            echoed = await stream.read()
            await sender
            server.cancel()
            await listener.close()
            return (
                hashlib.sha256(payload).hexdigest(),
                hashlib.sha256(echoed).hexdigest(),
                stream.peer.spiffe_id,
            )


def test_bytes_round_trip_through_router_and_peer_is_proven(network, arun) -> None:
    sent, received, peer = arun(_roundtrip(network, 3_000_000))
    assert sent == received
    assert peer == "spiffe://test.umbra/workload/web"


def test_dial_to_service_without_host_is_refused_with_reason(network, arun) -> None:
    async def main() -> DialError:
        async with running_router(network), context(network, "alice", "client") as client:
            with pytest.raises(DialError) as info:
                await client.dial("echo")
            return info.value

    error = arun(main())
    assert error.code == "no_terminator"
    assert "no host" in error.reason


def test_dial_without_attribute_is_refused_by_controller(network, arun) -> None:
    async def main() -> DialError:
        async with running_router(network), context(network, "mallory", "nobody") as client:
            with pytest.raises(DialError) as info:
                await client.dial("echo")
            return info.value

    assert arun(main()).code == "not_authorized"


def test_router_sees_only_ciphertext(network, arun) -> None:
    marker = b"PLAINTEXT-MARKER-7f3a9c"

    async def main() -> bytes:
        async with running_router(network) as router:
            seen = bytearray()
            forward = router.switch.frames

            def record(source, frames, now):  # type: ignore[no-untyped-def]
                for frame in frames:
                    seen.extend(bytes(frame.payload))
                return forward(source, frames, now)

            router.switch.frames = record  # type: ignore[method-assign]
            host = context(network, "web", "server")
            client = context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                stream = await client.dial("echo")
                stream.write(marker * 1000)
                stream.write_eof()
                echoed = await stream.read()
                server.cancel()
                assert echoed == marker * 1000
            return bytes(seen)

    seen = arun(main())
    assert len(seen) > 16_000  # the router did relay the stream
    assert marker not in seen
    assert marker[:8] not in seen


def test_host_sees_the_dialers_attributes(network, arun) -> None:
    async def main() -> tuple[str, tuple[str, ...]]:
        async with running_router(network):
            host = context(network, "web", "server")
            client = context(network, "alice", "client", "team-blue")
            async with host, client:
                listener = await host.listen("echo").start()
                await client.dial("echo")
                incoming = await listener.accept()
                return incoming.peer.name, incoming.peer.attributes

    name, attributes = arun(main())
    assert name == "alice"
    assert set(attributes) == {"client", "team-blue"}
