"""The host checks a dial ticket again, with what only it knows, whatever the router let through.

A real router on loopback that was never told of the newest epoch (as a lagging or
compromised router would be) passes a dialer's stale ticket; the host, which follows its
controller's events, refuses it with `ticket_stale`. An honest dialer sees the host's epoch
in the host's bind ticket, fails its own dial before the stream is handed out, and the SDK
fetches a fresh ticket and gets through on its second try.

Also through the real router: a transfer cut short by an unsealed RESET that claims
"no_error" reaches the host's application as an unauthenticated error, never as a clean end.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import context, echo_forever, running_router
from tests.integration.router_harness import (
    Overlay,
    credentials,
    run_with_bystanders,
    ticket,
)
from umbranet.pki import IdentityFile
from umbranet.pki.tickets import Action
from umbranet.proto import e2e
from umbranet.proto.circuit import Circuit, State
from umbranet.proto.e2e import DialerHandshake
from umbranet.sdk import Context, StreamReset
from umbranet.testing import LocalNetwork
from umbranet.testing.network import LocalControlPlane
from umbranet.testing.rawlink import RawLink
from umbranet.wire import ErrorCode, FrameType
from umbranet.wire.control import encode_error


class _Deaf(LocalControlPlane):
    """A dialer whose event stream is down: it keeps using the ticket it has."""

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        await asyncio.Event().wait()
        yield "never", {}


async def _until(check: Callable[[], bool]) -> None:
    while not check():  # noqa: ASYNC110 - the context exposes no event for its epoch
        await asyncio.sleep(0.01)


def _overlay(
    network: LocalNetwork, check: Callable[[Context, Context, Any, Any], Coroutine[Any, Any, None]]
) -> Coroutine[Any, Any, None]:
    async def main() -> None:
        async with asyncio.timeout(30), running_router(network) as router:
            host = context(network, "web", "server")
            alice: IdentityFile = network.identity("alice", attributes=("client",))

            def deaf(identity: IdentityFile) -> LocalControlPlane:
                return _Deaf(network, identity)

            # Every dial runs the Noise handshake: its message-3 checks are what this tests
            # (an open inside the session is checked at the open, tests/unit/test_session_streams).
            client = Context(alice, control=deaf, renew=False, session_streams=False)
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                try:
                    await _echo(client)  # caches a dial ticket of the current epoch
                    epoch = network.bump()
                    await _until(lambda: listener.min_epoch == epoch and host.epoch == epoch)
                    assert router.switch.epoch < epoch  # the router lags: no help there
                    await check(host, client, listener, router)
                finally:
                    server.cancel()
                    await listener.close()

    return main()


def test_host_refuses_a_stale_dial_ticket_the_router_let_through(
    network: LocalNetwork,
    arun: Callable[[Coroutine[Any, Any, None]], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def check(host: Context, client: Context, listener: Any, router: Any) -> None:
        # A dialer that does not look at the host's epoch (an old or a hostile SDK).
        monkeypatch.setattr(e2e, "ticket_epoch", lambda token: 1 << 30)
        stream = await client.dial("echo")
        with pytest.raises(StreamReset) as caught:
            stream.write(b"x")
            await asyncio.wait_for(stream.read(), 10)
        assert caught.value.code == "ticket_stale" and caught.value.authenticated
        assert listener.counters.get("ticket_stale") == 1

    arun(_overlay(network, check))


def test_a_dialer_behind_on_the_epoch_gets_through_with_a_fresh_ticket(
    network: LocalNetwork, arun: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    async def check(host: Context, client: Context, listener: Any, router: Any) -> None:
        stale = dict(client._tickets)  # the ticket the dialer holds from before the bump
        await _echo(client)  # its own check fails first, then the SDK dials again fresh
        assert client._tickets != stale

    arun(_overlay(network, check))


async def _echo(client: Context) -> None:
    stream = await client.dial("echo")
    payload = os.urandom(10_000)
    stream.write(payload)
    stream.write_eof()
    assert await stream.read() == payload


def test_an_unsealed_reset_no_error_through_a_real_router_is_an_error_at_the_host(
    network: LocalNetwork, arun: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    """A peer (or any hop) that cuts a transfer short with RESET code 0: the host's app reads
    what arrived, then an unauthenticated error, never a clean end; bystanders unharmed."""

    async def misbehave(net: Overlay) -> None:
        listener = await net.host.listen("sink").start()
        try:
            carol = network.identity("carol", attributes=("client",))
            token = ticket(network, carol, "sink", Action.DIAL)
            circuit = Circuit.dial(1, "sink", DialerHandshake("sink", token, credentials(carol)))
            async with await RawLink.open(net.router.address, carol) as raw:
                await raw.hello()
                raw.send_bytes(b"".join(circuit.poll_transmit()))
                while circuit.state is not State.OPEN:
                    circuit.handle_frame(await raw.recv(), datetime.now(UTC))
                circuit.write(b"x" * 100_000)  # a part of what was promised
                raw.send_bytes(b"".join(circuit.poll_transmit()))
                raw.send(FrameType.RESET, 1, encode_error(ErrorCode.NO_ERROR, "all done"))
                stream = await asyncio.wait_for(listener.accept(), 10)
                received = bytearray()
                with pytest.raises(StreamReset) as caught:
                    while chunk := await asyncio.wait_for(stream.read(65536), 10):
                        received += chunk
            assert len(received) == 100_000  # everything that was sent before the cut
            assert caught.value.code == "no_error" and not caught.value.authenticated
        finally:
            await listener.close()

    run_with_bystanders(network, arun, misbehave)
