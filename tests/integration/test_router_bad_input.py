"""The router's promise, through real loopback TLS: bad input gets a clear error and harms
nobody else.

Every test sends something wrong (garbage, a bad certificate, malformed frames, bad tickets, a
forged end-to-end proof), checks the error code it gets back and the router's counters, and
then checks that good clients never noticed: a stream opened before the bad input keeps
flowing and delivers every byte, and a fresh echo round trip works. Flow-control abuse is in
`test_router_flow_control.py`; the shared harness in `router_harness.py`.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import context, echo_forever
from tests.integration.router_harness import (
    Overlay,
    credentials,
    dial_payload,
    flip_signature,
    raw_endpoint,
    run_with_bystanders,
    spiffe_id,
    ticket,
)
from umbranet.pki import IdentityFile, Signer
from umbranet.pki.tickets import Action
from umbranet.proto.e2e import DialerHandshake, LocalCredentials
from umbranet.sdk import Context, DialError, StreamReset
from umbranet.testing import LocalNetwork, eventually
from umbranet.testing.rawlink import RawLink
from umbranet.wire import (
    MAX_PAYLOAD,
    ErrorCode,
    FrameType,
    decode_control,
    encode_control,
    encode_header,
)

pytestmark = pytest.mark.timeout(60)


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
        await eventually(lambda: net.router.statistics()["links"] == 2)
        if code is not ErrorCode.NO_ERROR:  # every refusal is counted by its code
            assert net.router.statistics()["counters"].get(code.code, 0) >= 1

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
        # Moving off: this is what the router says when a host vanishes (a stream that may
        # move would wait up to its resume deadline for the host to come back).
        bob = Context(
            network.identity("bob", attributes=("client",)),
            control=network.control,
            renew=False,
            resume_deadline=0,
        )
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
            # A later dial opens in bob's session and returns at once (0-RTT): the router's
            # refusal surfaces on the stream.
            later = await bob.dial("vanish")
            with pytest.raises(DialError) as gone:
                await later.read()
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


# -- 7. frames that race with a circuit's end: see tests/unit/test_proto_endpoint.py ---------
