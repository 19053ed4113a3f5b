"""Later streams between the same dialer and host open inside their end-to-end session,
the first data riding with the open (issue 11, item 6): real TLS links on loopback, one
in-process router, the SDK on both ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpcore
import pytest

from tests.conftest import context, echo_forever, running_router
from umbranet.integrations.httpx_transport import OverlayNetworkBackend
from umbranet.integrations.naming import ServiceNamer
from umbranet.sdk import Context, DialError
from umbranet.sdk.forward import Outcome, relay
from umbranet.testing import LocalNetwork
from umbranet.testing.waiting import eventually


@asynccontextmanager
async def _echo_service(network: LocalNetwork) -> AsyncIterator[tuple[Context, Context, Any]]:
    """A router, a host echoing every `echo` stream until EOF, and a client: (host, client,
    the host's listener)."""
    async with running_router(network, "r1"):
        host, client = context(network, "web", "server"), context(network, "alice", "client")
        async with host, client:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            try:
                yield host, client, listener
            finally:
                server.cancel()


@asynccontextmanager
async def _host_gone(network: LocalNetwork) -> AsyncIterator[Context]:
    """A client that holds a session with a host that then stopped hosting `echo`: its
    next dial is a 0-RTT open the router refuses (`no_terminator`)."""
    async with _echo_service(network) as (_, client, listener):
        await _first_stream(client)
        await listener.close()
        yield client


async def _first_stream(client: Any) -> None:
    """A first stream to `echo` (full handshake): later dials open in its session."""
    first = await client.dial("echo")
    first.write(b"one")
    first.write_eof()
    assert await asyncio.wait_for(first.read(), 10) == b"one"


def test_a_second_dial_opens_in_the_session_and_its_early_data_is_answered(
    network: LocalNetwork, arun: Any
) -> None:
    async def main() -> None:
        async with _echo_service(network) as (host, client, _):
            first = await client.dial("echo")  # a full Noise handshake
            first.write(b"one")
            first.write_eof()
            assert await asyncio.wait_for(first.read(), 10) == b"one"

            second = await client.dial("echo", early_data=b"ping")
            assert await asyncio.wait_for(second.readexactly(4), 10) == b"ping"
            second.write(b" more")
            second.write_eof()
            assert await asyncio.wait_for(second.read(), 10) == b" more"
            assert second.peer.spiffe_id == first.peer.spiffe_id
            stats = host.statistics()["sessions"]
            assert stats["streams_opened_in_session"] == 1

    arun(main())


@pytest.mark.parametrize("how", ["early_data", "writes"])
def test_a_host_that_forgot_the_session_makes_the_dial_fall_back_to_a_handshake(
    network: LocalNetwork, arun: Any, how: str
) -> None:
    # The refusal comes after `dial` returned: what was written (early data, or several
    # writes and the end of data) goes again, in order, over the full handshake's stream.
    async def main() -> None:
        async with running_router(network, "r1") as router:
            client = context(network, "alice", "client")
            async with client:
                for round_ in range(2):  # a new host process: it knows no session
                    host = context(network, "web", "server")
                    async with host:
                        listener = await host.listen("echo").start()
                        server = asyncio.get_running_loop().create_task(echo_forever(listener))
                        if how == "early_data":
                            stream = await client.dial("echo", early_data=b"hello world")
                        else:
                            stream = await client.dial("echo")
                            for piece in (b"hel", b"lo ", b"world"):
                                stream.write(piece)
                        stream.write_eof()
                        assert await asyncio.wait_for(stream.read(), 10) == b"hello world"
                        # The second process has another host instance id: the router
                        # refuses the open for the first one (gone) before any host sees it.
                        assert host.statistics()["sessions"].get("resume_refused", 0) == 0
                        gone = router.statistics()["counters"].get("instance_gone", 0)
                        assert gone == round_
                        server.cancel()
                        await listener.close()
                        await stream.wait_closed()
                assert client.statistics()["counters"]["open_refused"] == 1

    arun(main())


def test_a_dial_returns_at_once_and_the_first_write_rides_with_the_open(
    network: LocalNetwork, arun: Any
) -> None:
    async def main() -> None:
        async with _echo_service(network) as (host, client, _):
            await _first_stream(client)
            stream = await client.dial("echo")  # no early_data: the first write is it
            assert stream.get_extra_info("in_session")
            stream.write(b"ping")
            assert await asyncio.wait_for(stream.readexactly(4), 10) == b"ping"
            stats = host.statistics()["sessions"]
            assert stats["streams_with_early_data"] == 1

    arun(main())


def test_a_dialer_that_reads_first_gets_the_host_s_greeting(
    network: LocalNetwork, arun: Any
) -> None:
    async def greet(listener: Any) -> None:
        async for stream in listener:
            stream.write(b"220 ready\r\n")
            await stream.drain()
            stream.write_eof()

    async def main() -> None:
        async with running_router(network, "r1"):
            host, client = context(network, "web", "server"), context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(greet(listener))
                for _ in range(2):  # the second opens in the session, with nothing to carry
                    stream = await client.dial("echo")
                    assert await asyncio.wait_for(stream.read(), 10) == b"220 ready\r\n"
                    stream.write_eof()
                assert host.statistics()["sessions"]["streams_opened_in_session"] == 1
                assert "streams_with_early_data" not in host.statistics()["sessions"]
                server.cancel()

    arun(main())


def test_a_refused_0rtt_open_raises_dial_error_on_the_stream(
    network: LocalNetwork, arun: Any
) -> None:
    async def main() -> None:
        async with _host_gone(network) as client:
            stream = await client.dial("echo")
            stream.write(b"lost")
            with pytest.raises(DialError) as refused:
                await asyncio.wait_for(stream.read(), 10)
            assert refused.value.code == "no_terminator"
            with pytest.raises(DialError):
                stream.write(b"again")
            assert client.statistics()["counters"]["open_refused"] == 1

    arun(main())


def test_a_relay_reports_a_refused_0rtt_dial_as_refused_and_resets_the_app(
    network: LocalNetwork, arun: Any
) -> None:
    async def main() -> None:
        async with _host_gone(network) as client:
            outcomes: list[Outcome] = []

            async def relay_app(reader: Any, writer: Any) -> None:
                outcomes.append(await relay(await client.dial("echo"), reader, writer))

            local = await asyncio.start_server(relay_app, "127.0.0.1", 0)
            async with local:
                port = local.sockets[0].getsockname()[1]
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\n\r\n")
                with pytest.raises(ConnectionResetError):
                    await asyncio.wait_for(reader.read(), 10)
                writer.close()
                await eventually(lambda: outcomes, within=10)
            (outcome,) = outcomes
            assert outcome.refused and outcome.reset_by == "overlay"
            assert outcome.code == "no_terminator"

    arun(main())


def test_httpx_sees_a_refused_0rtt_dial_as_a_connect_error_with_the_code(
    network: LocalNetwork, arun: Any
) -> None:
    async def main() -> None:
        async with _host_gone(network) as client:
            backend = OverlayNetworkBackend(client, ServiceNamer(), 10.0)
            stream = await backend.connect_tcp("echo.umbra", 80)  # returns at once
            await stream.write(b"GET / HTTP/1.1\r\nHost: echo.umbra\r\n\r\n")
            with pytest.raises(httpcore.ConnectError) as refused:
                await stream.read(65536, timeout=10)
            assert getattr(refused.value, "code", None) == "no_terminator"

    arun(main())


def test_wait_closed_returns_for_a_stream_that_ended_before_anyone_waited(
    network: LocalNetwork, arun: Any
) -> None:
    async def main() -> None:
        async with _echo_service(network) as (_, client, _listener):
            await _first_stream(client)
            stream = await client.dial("echo", early_data=b"two")
            stream.write_eof()
            assert await asyncio.wait_for(stream.read(), 10) == b"two"
            assert await asyncio.wait_for(stream.read(), 10) == b""  # the echo ended too
            await eventually(stream.is_closing)
            await asyncio.wait_for(stream.wait_closed(), 10)
            await asyncio.wait_for(stream.wait_closed(), 10)  # and again

    arun(main())
