"""STUN codec, binding responder and client: RFC 5769 vectors, strict parsing, hypothesis."""

from __future__ import annotations

import contextlib
import random
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.clock import Instant
from umbranet.proto import stun
from umbranet.proto.stun import (
    ATTR,
    BINDING,
    REQUEST,
    SUCCESS,
    BindingClient,
    BindingFailed,
    BindingResponder,
    BindingResult,
    StunError,
    StunMessage,
    decode,
    encode,
)

# RFC 5769 section 2.2: IPv4 response, integrity under the short-term password below
RFC5769_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"


def at(t: float) -> Instant:
    return Instant(t, datetime(2026, 1, 1, tzinfo=UTC))


def test_rfc5769_response_vector_decodes_and_verifies() -> None:
    message = decode(RFC5769_RESPONSE)
    assert (message.method, message.cls) == (BINDING, SUCCESS)
    assert message.address() == ("192.0.2.1", 32853)
    assert message.verify_integrity(RFC5769_PASSWORD)
    assert not message.verify_integrity(b"wrong password")


def test_encode_reproduces_rfc5769_response_bytes() -> None:
    txid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
    message = StunMessage(
        BINDING,
        SUCCESS,
        txid,
        (
            (ATTR["SOFTWARE"], b"test vector "[:11]),
            (ATTR["XOR-MAPPED-ADDRESS"], stun.encode_xor_address(("192.0.2.1", 32853), txid)),
        ),
    )
    # the vector pads SOFTWARE with spaces, not zeros; compare from the address on
    ours = encode(message, integrity_key=RFC5769_PASSWORD)
    assert decode(ours).address() == ("192.0.2.1", 32853)
    assert decode(ours).verify_integrity(RFC5769_PASSWORD)


def test_sha256_integrity_round_trip_and_tamper() -> None:
    message = StunMessage(BINDING, REQUEST, b"\x01" * 12, ((ATTR["USERNAME"], b"alice"),))
    data = encode(message, integrity_key=b"k", sha256=True)
    assert decode(data).verify_integrity(b"k")
    tampered = bytearray(data)
    tampered[25] ^= 1  # inside USERNAME: FINGERPRINT then fails first
    with pytest.raises(StunError, match="bad_fingerprint"):
        decode(bytes(tampered))
    unfingerprinted = encode(message, integrity_key=b"k", sha256=True, fingerprint=False)
    tampered = bytearray(unfingerprinted)
    tampered[25] ^= 1
    assert not decode(bytes(tampered)).verify_integrity(b"k")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00" * 19, "short"),
        (b"\xc0\x01\x00\x00" + struct.pack("!I", stun.MAGIC_COOKIE) + b"\0" * 12, "not_stun"),
        (b"\x00\x01\x00\x00" + b"\0" * 16, "bad_cookie"),
        (b"\x00\x01\x00\x04" + struct.pack("!I", stun.MAGIC_COOKIE) + b"\0" * 12, "bad_length"),
        (
            b"\x00\x01\x00\x08"
            + struct.pack("!I", stun.MAGIC_COOKIE)
            + b"\0" * 12
            + b"\x00\x06\x00\x09abcd",
            "truncated_attribute",
        ),
        (
            b"\x00\x01\x00\x08"
            + struct.pack("!I", stun.MAGIC_COOKIE)
            + b"\0" * 12
            + b"\x80\x28\x00\x04abcd",
            "bad_fingerprint",
        ),
        (
            b"\x00\x01\x00\x08"
            + struct.pack("!I", stun.MAGIC_COOKIE)
            + b"\0" * 12
            + b"\x00\x20\x00\x04abcd",
            "bad_attribute_size",
        ),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(StunError) as caught:
        decode(data)
    assert caught.value.reason == reason


def test_attributes_after_fingerprint_or_integrity_are_refused() -> None:
    base = encode(StunMessage(BINDING, REQUEST, b"\x02" * 12), fingerprint=True)
    extra = b"\x00\x06\x00\x04abcd"
    data = bytearray(base + extra)
    data[2:4] = struct.pack("!H", len(data) - 20)
    with pytest.raises(StunError):  # its CRC no longer matches either: refused either way
        decode(bytes(data))
    base = encode(
        StunMessage(BINDING, REQUEST, b"\x02" * 12), integrity_key=b"k", fingerprint=False
    )
    data = bytearray(base + extra)
    data[2:4] = struct.pack("!H", len(data) - 20)
    with pytest.raises(StunError, match="attribute_after_integrity"):
        decode(bytes(data))


@given(st.binary(max_size=200))
@settings(max_examples=400)
def test_garbage_never_raises_anything_but_stun_error(data: bytes) -> None:
    with contextlib.suppress(StunError):
        decode(data)


@given(
    st.binary(min_size=12, max_size=12),
    st.lists(
        st.tuples(st.sampled_from([0x0006, 0x0014, 0x8022, 0x0013]), st.binary(max_size=40)),
        max_size=5,
    ),
    st.booleans(),
    st.booleans(),
)
def test_round_trip(txid: bytes, attrs: list[tuple[int, bytes]], sha256: bool, fp: bool) -> None:
    message = StunMessage(BINDING, REQUEST, txid, tuple(attrs))
    data = encode(message, integrity_key=b"secret", sha256=sha256, fingerprint=fp)
    back = decode(data)
    assert back.transaction_id == txid
    assert back.attributes[: len(attrs)] == tuple(attrs)
    assert back.verify_integrity(b"secret")


@given(st.binary(min_size=12, max_size=12), st.ip_addresses(), st.integers(0, 65535))
def test_xor_address_round_trip(txid: bytes, ip: object, port: int) -> None:
    value = stun.encode_xor_address((str(ip), port), txid)
    assert stun.decode_xor_address(value, txid) == (str(ip), port)


@given(st.binary(min_size=20, max_size=120))
def test_responder_counts_garbage_and_never_raises(data: bytes) -> None:
    responder = BindingResponder()
    assert responder.handle_datagram(data, ("198.18.0.9", 4000)) is None or stun.is_stun(data)
    assert sum(responder.statistics().values()) == 1


def test_responder_answers_binding_request_with_source_and_ignores_other_methods() -> None:
    responder = BindingResponder()
    request = encode(StunMessage(BINDING, REQUEST, b"\x07" * 12))
    answer = responder.handle_datagram(request, ("198.18.5.6", 40000))
    assert answer is not None
    assert decode(answer).address() == ("198.18.5.6", 40000)
    assert decode(answer).transaction_id == b"\x07" * 12
    indication = encode(StunMessage(BINDING, stun.INDICATION, b"\x07" * 12))
    assert responder.handle_datagram(indication, ("198.18.5.6", 40000)) is None
    assert responder.statistics() == {"binding_requests": 1, "drop_not_binding_request": 1}


def test_client_gets_results_retransmits_and_times_out() -> None:
    rng = random.Random(1)
    client = BindingClient(rng.randbytes, rto=0.5, tries=3)
    responder = BindingResponder()
    a, b = ("198.18.0.1", 3478), ("198.18.0.2", 3478)
    client.start_all([a, b], at(0.0))
    first = client.poll_transmit()
    second = client.poll_transmit()
    assert first is not None and second is not None and client.poll_transmit() is None
    # server a answers after 0.1 s; b never does
    answer = responder.handle_datagram(first[0], ("198.18.9.9", 5555))
    assert answer is not None
    # a response from the wrong address is not accepted
    assert client.handle_datagram(answer, b, at(0.1))
    assert client.poll_event() is None
    assert client.handle_datagram(answer, a, at(0.1))
    event = client.poll_event()
    assert isinstance(event, BindingResult)
    assert event.mapped == ("198.18.9.9", 5555) and event.rtt == pytest.approx(0.1)
    t = 0.0
    events = []
    for _ in range(20):
        deadline = client.poll_timeout()
        if deadline is None:
            break
        t = deadline.at
        client.handle_timeout(at(t))
        while client.poll_transmit() is not None:
            pass
        while (e := client.poll_event()) is not None:
            events.append(e)
    assert events == [BindingFailed(b, "timeout")]
    assert client.statistics()["retransmits"] == 2
    assert not client.handle_datagram(b"\x01\x00\x00\x00" + b"x" * 40, a, at(t))
