"""Shared by the router bad-input tests: an overlay of good clients (their streams must never
notice bad input) and helpers to speak raw frames and forge tickets on an authenticated link."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.conftest import context, echo_forever, running_router
from umbranet.pki import IdentityFile, Signer
from umbranet.pki.tickets import Action
from umbranet.proto.e2e import LocalCredentials
from umbranet.proto.flow import DEFAULT_WINDOW
from umbranet.router import Router
from umbranet.router.links import SwitchLink
from umbranet.sdk import Context, Listener, Stream
from umbranet.testing import LocalNetwork
from umbranet.testing.rawlink import RawLink
from umbranet.wire import (
    encode_control,
)

LIVENESS = 30.0  # seconds; every test here takes well under one


# -- the good clients -----------------------------------------------------------------------


@dataclass
class Overlay:
    """A router, an echo host and a client: the bystanders bad input must not harm."""

    network: LocalNetwork
    router: Router
    host: Context
    client: Context
    listener: Listener

    def counters(self) -> dict[str, int]:
        return dict(self.router.statistics()["counters"])


@asynccontextmanager
async def overlay(network: LocalNetwork) -> AsyncIterator[Overlay]:
    network.service("sink", dial=("client",), bind=("server",))
    network.service("vanish", dial=("client",), bind=("server",))
    async with running_router(network) as router:
        host = context(network, "web", "server")
        client = context(network, "alice", "client")
        async with host, client:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            try:
                yield Overlay(network, router, host, client, listener)
            finally:
                server.cancel()
                await listener.close()


async def echo_round_trip(client: Context, size: int = 200_000) -> None:
    """A fresh stream through the router: the bytes come back unchanged."""
    stream = await client.dial("echo")
    payload = os.urandom(size)
    stream.write(payload)
    stream.write_eof()
    assert await stream.read() == payload


class Flow:
    """A stream that is open across the bad input: half is sent before it, half after."""

    def __init__(self, stream: Stream, size: int) -> None:
        self.stream = stream
        self.payload = os.urandom(size)
        self.halfway = asyncio.Event()
        self.go_on = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._sender = loop.create_task(self._send())
        self._reader = loop.create_task(stream.read())

    @classmethod
    async def start(cls, client: Context, size: int = 1_000_000) -> Flow:
        flow = cls(await client.dial("echo"), size)
        await flow.halfway.wait()
        return flow

    async def _send(self) -> None:
        half = len(self.payload) // 2
        for offset in range(0, len(self.payload), 32768):
            if offset >= half and not self.go_on.is_set():
                self.halfway.set()
                await self.go_on.wait()
            self.stream.write(self.payload[offset : offset + 32768])
            await self.stream.drain()
        self.stream.write_eof()

    async def finish(self) -> None:
        """Send the second half; every byte must come back in order."""
        self.go_on.set()
        await self._sender
        echoed = await self._reader
        assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(self.payload).hexdigest()


async def bystanders_unharmed(net: Overlay, flow: Flow) -> None:
    await flow.finish()
    await echo_round_trip(net.client)


def run_with_bystanders(
    network: LocalNetwork, arun: Any, misbehave: Callable[[Overlay], Awaitable[None]]
) -> dict[str, int]:
    """Start the overlay and a flowing stream, misbehave, check the bystanders; counters."""

    async def main() -> dict[str, int]:
        # A liveness bound, not a speed check: pytest-timeout's SIGALRM cannot interrupt a
        # uvloop blocked in epoll, so a hang must fail from inside the loop.
        async with asyncio.timeout(LIVENESS), overlay(network) as net:
            flow = await Flow.start(net.client)
            await misbehave(net)
            await bystanders_unharmed(net, flow)
            return net.counters()

    result: dict[str, int] = arun(main())
    return result


# -- raw-link helpers ----------------------------------------------------------------------


def ticket(
    network: LocalNetwork,
    identity: IdentityFile | str,
    service: str,
    action: Action,
    *,
    now: datetime | None = None,
    signer: Signer | None = None,
) -> str:
    subject = identity if isinstance(identity, str) else identity.spiffe_id
    signer = signer or network.signer
    # Of the network's current epoch, as the controller issues them: hosts refuse older ones.
    return signer.sign_ticket(
        subject, service, action, now or datetime.now(UTC), epoch=network.epoch
    )[1]


def flip_signature(token: str) -> str:
    prefix, claims, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    return ".".join([prefix, claims, base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()])


def dial_payload(token: str, service: str = "echo", blob: bytes = b"m1") -> bytes:
    return encode_control({"ticket": token, "service": service, "window": DEFAULT_WINDOW}, blob)


async def raw_endpoint(net: Overlay, name: str, *attributes: str) -> RawLink:
    raw = await RawLink.open(net.router.address, net.network.identity(name, attributes=attributes))
    await raw.hello()
    return raw


def spiffe_id(network: LocalNetwork, name: str) -> str:
    """The SPIFFE ID of a workload, without enrolling it again (that would reset its attributes)."""
    return f"spiffe://{network.trust_domain}/workload/{name}"


def peer_link(router: Router, spiffe_id: str) -> SwitchLink:
    links = [p for p in router._links.values() if p.identity == spiffe_id]
    assert len(links) == 1
    return links[0]


def credentials(identity: IdentityFile) -> LocalCredentials:
    return LocalCredentials(identity.cert_pem, identity.noise_private_key, identity.bundle)
