"""The router's promise, through real loopback TLS: bad input gets a clear error and harms
nobody else.

Every test sends something wrong (garbage, a bad certificate, malformed frames, bad tickets,
window overruns, a forged end-to-end proof), checks the error code it gets back and the
router's counters, and then checks that good clients never noticed: a stream opened before
the bad input keeps flowing and delivers every byte, and a fresh echo round trip works.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import context, echo_forever, running_router
from umbranet.pki import IdentityFile, Signer
from umbranet.pki.tickets import Action
from umbranet.proto.e2e import DialerHandshake, HostHandshake, LocalCredentials
from umbranet.proto.flow import DEFAULT_WINDOW, MIN_WINDOW
from umbranet.router import Router
from umbranet.router.forwarder import PeerLink
from umbranet.sdk import Context, DialError, Listener, Stream, StreamReset
from umbranet.sdk.connection import RouterConnection
from umbranet.testing import LocalNetwork
from umbranet.testing.rawlink import RawLink
from umbranet.wire import (
    MAX_DATA_PAYLOAD,
    MAX_PAYLOAD,
    ErrorCode,
    Frame,
    FrameType,
    decode_control,
    encode_control,
    encode_header,
)

pytestmark = pytest.mark.timeout(60)
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


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition the loop will make true soon (bounded by the test timeout)."""
    while not condition():  # noqa: ASYNC110 - router internals expose no event to wait on
        await asyncio.sleep(0.005)


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
    return signer.sign_ticket(subject, service, action, now or datetime.now(UTC))[1]


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


def peer_link(router: Router, spiffe_id: str) -> PeerLink:
    links = [p for p in router._links.values() if p.identity == spiffe_id]
    assert len(links) == 1
    return links[0]


def credentials(identity: IdentityFile) -> LocalCredentials:
    return LocalCredentials(identity.cert_pem, identity.noise_private_key, identity.bundle)


# -- 1. strangers at the TLS port ------------------------------------------------------------


@pytest.mark.parametrize("stranger", ["garbage", "no_certificate", "other_ca", "expired"])
def test_tls_strangers_are_refused_and_counted(network: LocalNetwork, arun: Any, stranger: str):
    async def misbehave(net: Overlay) -> None:
        before = net.counters().get("tls_handshake_failed", 0)
        if stranger == "garbage":
            raw = await RawLink.open_plain(net.router.address)
            raw.send_bytes(b"GET / HTTP/1.1\r\nHost: router\r\n\r\n" * 4)
        else:
            identity = {
                "no_certificate": None,
                "other_ca": LocalNetwork().identity("alice", attributes=("client",)),
                "expired": network.identity(
                    "old",
                    attributes=("client",),
                    now=datetime.now(UTC) - timedelta(days=2),
                    lifetime=timedelta(hours=1),
                ),
            }[stranger]
            # TLS 1.3: the client finishes first; the refusal arrives on the first read.
            raw = await RawLink.open(net.router.address, identity)
            raw.send(FrameType.HELLO, 0, encode_control({"v": 1, "role": "endpoint"}))
        assert await raw.read_until_closed() == []  # not a single frame, not even GOAWAY
        await raw.aclose()
        assert net.counters().get("tls_handshake_failed", 0) == before + 1
        assert net.router.statistics()["links"] == 2  # the echo host and the client

    counters = run_with_bystanders(network, arun, misbehave)
    assert counters["links_accepted"] == 2


# -- 2. malformed frames on an authenticated link ----------------------------------------------


async def _no_hello(raw: RawLink) -> None:
    raw.send(FrameType.PING, 0, b"12345678")


async def _unknown_type(raw: RawLink) -> None:
    await raw.hello()
    raw.send(0x7F, 0, b"")


async def _reserved_bits(raw: RawLink) -> None:
    await raw.hello()
    raw.send_bytes(struct.pack("!BBHII", FrameType.PING, 0, 0x0100, 0, 0))


async def _oversized(raw: RawLink) -> None:
    await raw.hello()
    raw.send_bytes(encode_header(FrameType.DATA, 1, MAX_PAYLOAD + 1))


async def _bad_version(raw: RawLink) -> None:
    raw.send(FrameType.HELLO, 0, encode_control({"v": 99, "role": "endpoint"}))


async def _dial_even(raw: RawLink) -> None:
    await raw.hello()
    raw.send(FrameType.DIAL, 2, dial_payload("whatever"))


async def _connect_from_endpoint(raw: RawLink) -> None:
    await raw.hello()
    raw.send(FrameType.CONNECT, 1, encode_control({}))


async def _goodbye(raw: RawLink) -> None:
    await raw.hello()
    raw.send(FrameType.GOAWAY, 0, encode_control({"code": 0, "reason": "bye"}))


@pytest.mark.parametrize(
    ("misbehave", "code"),
    [
        (_no_hello, ErrorCode.PROTOCOL_ERROR),
        (_unknown_type, ErrorCode.PROTOCOL_ERROR),
        (_reserved_bits, ErrorCode.PROTOCOL_ERROR),
        (_oversized, ErrorCode.FRAME_TOO_LARGE),
        (_bad_version, ErrorCode.UNSUPPORTED_VERSION),
        (_dial_even, ErrorCode.PROTOCOL_ERROR),
        (_connect_from_endpoint, ErrorCode.PROTOCOL_ERROR),
        (_goodbye, ErrorCode.NO_ERROR),
    ],
)
def test_a_bad_frame_stream_ends_that_link_with_goaway(
    network: LocalNetwork,
    arun: Any,
    misbehave: Callable[[RawLink], Awaitable[None]],
    code: ErrorCode,
) -> None:
    async def run(net: Overlay) -> None:
        identity = network.identity("carol", attributes=("client",))
        async with await RawLink.open(net.router.address, identity) as raw:
            await misbehave(raw)
            frames = await raw.read_until_closed()
        goaway = [f for f in frames if f.type == FrameType.GOAWAY]
        assert len(goaway) == 1, frames
        assert RawLink.error(goaway[0])[0] is code
        await until(lambda: net.router.statistics()["links"] == 2)

    run_with_bystanders(network, arun, run)


def test_malformed_dial_json_resets_only_that_circuit(network: LocalNetwork, arun: Any) -> None:
    async def run(net: Overlay) -> None:
        async with await raw_endpoint(net, "carol", "client") as raw:
            raw.send(FrameType.DIAL, 1, b'\x00\x0a{"ticket":')
            raw.send(FrameType.DIAL, 3, b"\x00\x02[]")
            for circuit in (1, 3):
                reset = await raw.expect(FrameType.RESET, circuit)
                assert RawLink.error(reset)[0] is ErrorCode.BAD_CONTROL_PAYLOAD
            raw.send(FrameType.PING, 0, b"still-up")  # the link itself lives on
            assert (await raw.expect(FrameType.PONG)).payload == b"still-up"

    counters = run_with_bystanders(network, arun, run)
    assert counters["bad_control_payload"] == 2


# -- 3. tickets --------------------------------------------------------------------------------


def _dial_cases() -> list[tuple[str, Callable[[LocalNetwork, IdentityFile], str], str]]:
    past = datetime.now(UTC) - timedelta(hours=1)
    return [
        ("forged", lambda n, me: flip_signature(ticket(n, me, "echo", Action.DIAL)), "invalid"),
        (
            "unknown_key",
            lambda n, me: ticket(n, me, "echo", Action.DIAL, signer=Signer.generate()),
            "invalid",
        ),
        ("garbage", lambda n, me: "ut1.not.a-ticket", "invalid"),
        ("expired", lambda n, me: ticket(n, me, "echo", Action.DIAL, now=past), "expired"),
        (
            "other_identity",
            lambda n, me: ticket(n, spiffe_id(n, "alice"), "echo", Action.DIAL),
            "wrong_identity",
        ),
        ("other_service", lambda n, me: ticket(n, me, "sink", Action.DIAL), "wrong_service"),
        ("bind_ticket", lambda n, me: ticket(n, me, "echo", Action.BIND), "wrong_service"),
    ]


@pytest.mark.parametrize(("case", "make", "code"), _dial_cases(), ids=[c[0] for c in _dial_cases()])
def test_dial_with_a_bad_ticket_is_reset_before_any_host_sees_it(
    network: LocalNetwork,
    arun: Any,
    case: str,
    make: Callable[[LocalNetwork, IdentityFile], str],
    code: str,
) -> None:
    async def run(net: Overlay) -> None:
        carol = network.identity("carol", attributes=("client",))
        async with await RawLink.open(net.router.address, carol) as raw:
            await raw.hello()
            raw.send(FrameType.DIAL, 1, dial_payload(make(network, carol)))
            reset = await raw.expect(FrameType.RESET, 1)
            error, reason = RawLink.error(reset)
            assert error.code == f"ticket_{code}", reason
            # The same link can still dial with a good ticket: the host answers.
            good = ticket(network, carol, "echo", Action.DIAL)
            message_1 = DialerHandshake("echo", good, credentials(carol)).start()
            raw.send(FrameType.DIAL, 3, dial_payload(good, blob=message_1))
            connected = await raw.recv()
            assert (connected.type, connected.circuit) == (FrameType.ACCEPT, 3)
            raw.send(FrameType.RESET, 3, encode_control({"code": 41, "reason": "probe done"}))

    counters = run_with_bystanders(network, arun, run)
    assert counters[f"ticket_{code}"] == 1
    assert counters["dials"] == 3  # the flow, the good probe dial, the round trip


def _bind_with(token: str) -> bytes:
    return encode_control({"ticket": token, "service": "sink"})


def _bind_cases() -> list[tuple[str, Callable[[LocalNetwork, IdentityFile], bytes], str]]:
    past = datetime.now(UTC) - timedelta(hours=1)
    return [
        (
            "dial_ticket",
            lambda n, me: _bind_with(ticket(n, me, "sink", Action.DIAL)),
            "ticket_wrong_service",
        ),
        (
            "expired",
            lambda n, me: _bind_with(ticket(n, me, "sink", Action.BIND, now=past)),
            "ticket_expired",
        ),
        (
            "other_identity",
            lambda n, me: _bind_with(ticket(n, spiffe_id(n, "web"), "sink", Action.BIND)),
            "ticket_wrong_identity",
        ),
        ("no_ticket", lambda n, me: encode_control({"service": "sink"}), "bad_control_payload"),
        ("malformed", lambda n, me: b"\x00\x01{", "bad_control_payload"),
    ]


@pytest.mark.parametrize(("case", "make", "code"), _bind_cases(), ids=[c[0] for c in _bind_cases()])
def test_bind_with_a_bad_ticket_gets_bind_err(
    network: LocalNetwork,
    arun: Any,
    case: str,
    make: Callable[[LocalNetwork, IdentityFile], bytes],
    code: str,
) -> None:
    async def run(net: Overlay) -> None:
        mallory = network.identity("mallory", attributes=("server",))
        async with await RawLink.open(net.router.address, mallory) as raw:
            await raw.hello()
            raw.send(FrameType.BIND, 5, make(network, mallory))
            answer = await raw.recv()
            assert (answer.type, answer.circuit) == (FrameType.BIND_ERR, 5)
            assert RawLink.error(answer)[0].code == code
            assert net.router.statistics()["bindings"] == 1  # only the echo host
            raw.send(FrameType.PING, 0, b"alive")
            assert (await raw.expect(FrameType.PONG)).payload == b"alive"

    counters = run_with_bystanders(network, arun, run)
    assert counters[code] == 1


# -- 4. no host, and a host that vanishes mid-transfer -------------------------------------------


def test_a_host_that_vanishes_resets_its_streams_and_nobody_elses(
    network: LocalNetwork, arun: Any
) -> None:
    async def run(net: Overlay) -> None:
        with pytest.raises(DialError) as refused:
            await net.client.dial("vanish")
        assert refused.value.code == "no_terminator"

        flaky = context(network, "flaky", "server")
        bob = context(network, "bob", "client")
        async with bob:
            listener = await flaky.listen("vanish").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            doomed = await bob.dial("vanish")
            doomed.write(os.urandom(300_000))
            await doomed.readexactly(100_000)  # the host is mid-transfer
            await flaky.close()
            with pytest.raises(StreamReset) as reset:
                await doomed.read()
            assert reset.value.code == "host_gone"
            server.cancel()
            with pytest.raises(DialError) as gone:
                await bob.dial("vanish")
            assert gone.value.code == "no_terminator"

    counters = run_with_bystanders(network, arun, run)
    assert counters["no_terminator"] == 2


def test_a_new_binding_leaves_a_circuit_with_the_same_id_alone(
    network: LocalNetwork, arun: Any
) -> None:
    # Binding ids are the endpoint's, circuit ids the router's: the same number may be both.
    async def run(net: Overlay) -> None:
        sink = await net.host.listen("sink").start()  # binding 2, while the flow is circuit 2
        await sink.close()

    run_with_bystanders(network, arun, run)


def test_closing_a_stream_while_the_peer_answers_keeps_the_link(
    network: LocalNetwork, arun: Any
) -> None:
    # close() discards what the peer still sends; when the peer's FIN ended the circuit,
    # waking the closing stream used to recurse until the client's whole link died.
    async def run(net: Overlay) -> None:
        for _ in range(3):
            stream = await net.client.dial("echo")
            stream.write(b"x" * 100_000)
            stream.close()
            await stream.wait_closed()

    run_with_bystanders(network, arun, run)


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
        await until(
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
            await until(lambda: route.peer.account.in_flight >= MIN_WINDOW - 4096 - 16)
            await echo_round_trip(net.client, 2_000_000)  # the dialer's link is not stalled
            assert not writer.done()
            assert route.peer.account.in_flight <= MIN_WINDOW
            # Everything the router ever wrote to this host is still buffered somewhere
            # (router or kernel), and it is the window plus a few control frames.
            assert peer.link.bytes_out <= MIN_WINDOW + 8192  # type: ignore[attr-defined]
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
            await until(lambda: throttled() or flooder.done())
            assert throttled()
            peer = peer_link(net.router, spiffe_id(network, "mallory"))
            await echo_round_trip(net.client)  # meanwhile everybody else is served
            # At most the limit plus the answers to one read.
            buffered = peer.link.transport.get_write_buffer_size()  # type: ignore[attr-defined]
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


# -- 6. a dialer whose end-to-end proof fails at the host ---------------------------------------


def _proof_cases() -> list[tuple[str, str]]:
    return [
        ("other_certificate", "peer_identity_mismatch"),
        ("other_identity", "peer_identity_mismatch"),
        ("other_ticket", "peer_identity_mismatch"),
        ("other_ca", "peer_not_authorized"),
        ("bind_ticket", "peer_not_authorized"),
    ]


@pytest.mark.parametrize(("case", "code"), _proof_cases(), ids=[c[0] for c in _proof_cases()])
def test_host_resets_a_dialer_whose_proof_fails_and_keeps_accepting(
    network: LocalNetwork, arun: Any, case: str, code: str
) -> None:
    async def run(net: Overlay) -> None:
        carol = network.identity("carol", attributes=("client",))
        bob = network.identity("bob", attributes=("client",))
        stranger = LocalNetwork().identity("carol")
        mine = credentials(carol)
        proof, proof_ticket = {
            "other_certificate": (
                LocalCredentials(bob.cert_pem, carol.noise_private_key, network.bundle),
                ticket(network, carol, "echo", Action.DIAL),
            ),
            "other_identity": (credentials(bob), ticket(network, bob, "echo", Action.DIAL)),
            "other_ticket": (mine, ticket(network, bob, "echo", Action.DIAL)),
            "other_ca": (
                LocalCredentials(stranger.cert_pem, stranger.noise_private_key, network.bundle),
                ticket(network, carol, "echo", Action.DIAL),
            ),
            "bind_ticket": (mine, ticket(network, carol, "echo", Action.BIND)),
        }[case]
        handshake = DialerHandshake("echo", proof_ticket, proof)
        async with await RawLink.open(net.router.address, carol) as raw:
            await raw.hello()
            token = ticket(network, carol, "echo", Action.DIAL)  # what the router checks
            raw.send(FrameType.DIAL, 1, dial_payload(token, blob=handshake.start()))
            accept = await raw.expect(FrameType.ACCEPT, 1)
            message_3, _, host = handshake.finish(
                decode_control(accept.payload).blob, datetime.now(UTC)
            )
            assert host.spiffe_id == net.host.identity.spiffe_id
            raw.send(FrameType.HANDSHAKE, 1, message_3)
            reset = await raw.expect(FrameType.RESET, 1)
            assert RawLink.error(reset)[0].code == code
        assert net.listener.counters[code] == 1

    run_with_bystanders(network, arun, run)


# -- 7. frames that race with a circuit's end do not cost the endpoint its link ------------------


class _FakeLink:
    closed = False

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        self.closed = True

    def write_many(self, buffers: list[bytes]) -> None:
        pass

    def send(self, ftype: int, circuit: int, payload: bytes = b"", flags: int = 0) -> None:
        pass


@pytest.mark.parametrize("ftype", [FrameType.ACCEPT, FrameType.HANDSHAKE, FrameType.DATA])
def test_late_frames_for_an_ended_circuit_are_dropped(network: LocalNetwork, ftype: int) -> None:
    # E.g. a dial that timed out (RESET sent) crosses the host's ACCEPT at the router.
    connection = RouterConnection(
        network.identity("alice"), "127.0.0.1:1", lambda: datetime.now(UTC)
    )
    link = _FakeLink()
    connection._link = link  # type: ignore[assignment]
    late = Frame(ftype, 0, 3, encode_control({"window": MIN_WINDOW}))
    connection.frames_received(link, [late])  # type: ignore[arg-type]
    assert not link.closed
    assert connection.counters == {"frames_unknown_circuit": 1}
