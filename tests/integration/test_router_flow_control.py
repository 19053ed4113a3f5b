"""Flow-control abuse at the router, through real loopback TLS: overrunning a window, crediting
bytes never sent, readers that stop or read line by line. Each costs only its own circuit (or,
for a peer that never reads, its own link is throttled); everyone else keeps flowing.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.integration.router_harness import (
    Overlay,
    credentials,
    dial_payload,
    echo_round_trip,
    peer_link,
    raw_endpoint,
    run_with_bystanders,
    spiffe_id,
    ticket,
)
from umbranet.pki.tickets import Action
from umbranet.proto.e2e import HostHandshake
from umbranet.proto.flow import DEFAULT_WINDOW, MIN_WINDOW
from umbranet.sdk import Stream
from umbranet.testing import LocalNetwork, eventually
from umbranet.testing.rawlink import RawLink
from umbranet.wire import (
    MAX_DATA_PAYLOAD,
    ErrorCode,
    FrameType,
    decode_control,
    encode_control,
    encode_header,
)

pytestmark = pytest.mark.timeout(60)


# -- 5. flow control --------------------------------------------------------------------------


async def _raw_circuit(net: Overlay, window: int = MIN_WINDOW) -> tuple[RawLink, RawLink, int]:
    """A raw dialer and a raw host joined by one circuit through the router."""
    sinkhost = net.network.identity("sinkhost", attributes=("server",))
    host = await RawLink.open(net.router.address, sinkhost)
    await host.hello()
    bind = {"ticket": ticket(net.network, sinkhost, "sink", Action.BIND), "service": "sink"}
    host.send(FrameType.BIND, 1, encode_control(bind))
    await host.expect(FrameType.BIND_OK, 1)
    carol = net.network.identity("carol", attributes=("client",))
    dialer = await RawLink.open(net.router.address, carol)
    await dialer.hello()
    dialer.send(
        FrameType.DIAL, 1, dial_payload(ticket(net.network, carol, "sink", Action.DIAL), "sink")
    )
    connect = await host.expect(FrameType.CONNECT)
    host.send(FrameType.ACCEPT, connect.circuit, encode_control({"window": window}, b"m2"))
    await dialer.expect(FrameType.ACCEPT, 1)
    dialer.send(FrameType.HANDSHAKE, 1, b"m3")
    return dialer, host, connect.circuit


async def _overrun_the_window(dialer: RawLink, host: RawLink, circuit: int) -> None:
    for _ in range(2):  # each frame is a full window; the second overruns it
        dialer.send(FrameType.DATA, 1, b"\x00" * MAX_DATA_PAYLOAD)


async def _credit_bytes_never_sent(dialer: RawLink, host: RawLink, circuit: int) -> None:
    dialer.send(FrameType.DATA, 1, b"\x00" * 1000)
    await host.expect(FrameType.DATA, circuit)
    host.send(FrameType.CREDIT, circuit, struct.pack("!I", 5000))


@pytest.mark.parametrize("abuse", [_overrun_the_window, _credit_bytes_never_sent])
def test_flow_control_abuse_resets_that_circuit(
    network: LocalNetwork, arun: Any, abuse: Callable[[RawLink, RawLink, int], Awaitable[None]]
) -> None:
    async def run(net: Overlay) -> None:
        dialer, host, circuit = await _raw_circuit(net)
        async with dialer, host:
            await abuse(dialer, host, circuit)
            for raw, on in ((dialer, 1), (host, circuit)):
                reset = await raw.expect(FrameType.RESET, on)
                assert RawLink.error(reset)[0] is ErrorCode.FLOW_CONTROL_ERROR

    counters = run_with_bystanders(network, arun, run)
    assert counters["flow_control_error"] == 1


async def _write_forever(stream: Stream, total: int) -> None:
    chunk = os.urandom(65536)
    for _ in range(total // len(chunk)):
        stream.write(chunk)
        await stream.drain()


def test_a_stream_nobody_reads_stalls_only_itself(network: LocalNetwork, arun: Any) -> None:
    async def run(net: Overlay) -> None:
        held: list[Stream] = []
        sink = await net.host.listen("sink").start()

        async def hold() -> None:
            async for stream in sink:
                held.append(stream)  # accepted, never read

        holder = asyncio.get_running_loop().create_task(hold())
        stream = await net.client.dial("sink")
        writer = asyncio.get_running_loop().create_task(_write_forever(stream, 8 << 20))
        await eventually(
            lambda: bool(held) and held[0].at_eof() is False and stream._circuit.unsent_bytes > 0
        )
        # The same client link, the same host link: another stream runs to completion.
        await echo_round_trip(net.client, 2_000_000)
        assert not writer.done()
        assert held[0]._circuit.readable_bytes <= DEFAULT_WINDOW
        writer.cancel()
        holder.cancel()
        await sink.close()

    run_with_bystanders(network, arun, run)


def test_router_buffers_at_most_the_window_for_a_host_that_stops_reading(
    network: LocalNetwork, arun: Any
) -> None:
    async def run(net: Overlay) -> None:
        sinkhost = network.identity("sinkhost", attributes=("server",))
        async with await RawLink.open(net.router.address, sinkhost) as host:
            await host.hello()
            bind_ticket = ticket(network, sinkhost, "sink", Action.BIND)
            host.send(FrameType.BIND, 1, encode_control({"ticket": bind_ticket, "service": "sink"}))
            await host.expect(FrameType.BIND_OK, 1)
            dialing = asyncio.get_running_loop().create_task(net.client.dial("sink"))
            connect = await host.expect(FrameType.CONNECT)
            handshake = HostHandshake("sink", bind_ticket, credentials(sinkhost))
            message_2 = handshake.answer(decode_control(connect.payload).blob)
            host.send(
                FrameType.ACCEPT, connect.circuit, encode_control({"window": MIN_WINDOW}, message_2)
            )
            host.pause_reading()  # from now on the host reads nothing at all
            stream = await dialing
            writer = asyncio.get_running_loop().create_task(_write_forever(stream, 8 << 20))

            peer = peer_link(net.router, sinkhost.spiffe_id)
            route = peer.routes[connect.circuit]
            await eventually(lambda: route.peer.account.in_flight >= MIN_WINDOW - 4096 - 16)
            await echo_round_trip(net.client, 2_000_000)  # the dialer's link is not stalled
            assert not writer.done()
            assert route.peer.account.in_flight <= MIN_WINDOW
            # Everything the router ever wrote to this host is still buffered somewhere
            # (router or kernel), and it is the window plus a few control frames.
            assert peer.handle.bytes_out <= MIN_WINDOW + 8192  # type: ignore[attr-defined]
            writer.cancel()
            host.abort()

    run_with_bystanders(network, arun, run)


def test_a_peer_that_never_reads_its_answers_is_throttled(network: LocalNetwork, arun: Any) -> None:
    # PONGs (and RESETs for refused DIALs) are not bounded by any window: a peer that asks
    # without reading must not make the router buffer the answers without limit.
    async def run(net: Overlay) -> None:
        limit = net.router.config.link_buffer_limit = 256 * 1024
        ping = encode_header(FrameType.PING, 0, 64) + b"p" * 64
        async with await raw_endpoint(net, "mallory", "client") as raw:
            raw.pause_reading()

            def throttled() -> bool:
                return bool(net.counters().get("links_throttled"))

            async def flood() -> None:
                for _ in range(200):  # 64 MB at most: far beyond any kernel buffering
                    if throttled():
                        return
                    raw.send_bytes(ping * 4096)
                    await raw.drain()

            flooder = asyncio.get_running_loop().create_task(flood())
            await eventually(lambda: throttled() or flooder.done())
            assert throttled()
            peer = peer_link(net.router, spiffe_id(network, "mallory"))
            await echo_round_trip(net.client)  # meanwhile everybody else is served
            # At most the limit plus the answers to one read.
            buffered = peer.handle.transport.get_write_buffer_size()  # type: ignore[attr-defined]
            assert buffered <= limit + 512 * 1024
            flooder.cancel()
            # Once the peer reads again, so does the router: a last PING is answered.
            raw.send(FrameType.PING, 0, b"the-end")
            raw.resume_reading()
            while (await raw.expect(FrameType.PONG)).payload != b"the-end":
                pass

    run_with_bystanders(network, arun, run)


def test_a_line_by_line_reader_is_not_reset_for_over_crediting(
    network: LocalNetwork, arun: Any
) -> None:
    # readline() over-reads and pushes the rest back; if those bytes were credited twice the
    # router would see more CREDIT than DATA and reset the circuit (flow_control_error).
    async def run(net: Overlay) -> None:
        stream = await net.client.dial("echo")
        # More than the window, so credit must flow back while lines are still arriving.
        lines = [b"%06d" % i + b"." * 4000 + b"\n" for i in range(600)]
        writer = asyncio.get_running_loop().create_task(_write_lines(stream, lines))
        for expected in lines:
            assert await stream.readline() == expected
        await writer
        assert await stream.read() == b""

    counters = run_with_bystanders(network, arun, run)
    assert "flow_control_error" not in counters


async def _write_lines(stream: Stream, lines: list[bytes]) -> None:
    for start in range(0, len(lines), 50):
        stream.write(b"".join(lines[start : start + 50]))
        await stream.drain()
    stream.write_eof()
