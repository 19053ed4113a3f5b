"""TURN over a stream without a server: framing, padding, no retransmits, out-of-step verdicts."""

from __future__ import annotations

import os
import random
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.aio.turn_stream import parse_turn_url
from umbranet.clock import Instant
from umbranet.proto import stun
from umbranet.proto.stun import ATTR, StunMessage
from umbranet.proto.turn import AllocationFailed, TurnClient
from umbranet.proto.turn_stream import StreamDeframer, pad_channel_data

SERVER = ("198.18.0.3", 3478)


def at(t: float) -> Instant:
    return Instant(t, datetime(2026, 12, 4, tzinfo=UTC))


def _stun(payload: bytes) -> bytes:
    attrs = ((ATTR["DATA"], payload),) if payload else ()
    return stun.encode(StunMessage(stun.DATA, stun.INDICATION, os.urandom(12), attrs))


def _channel(channel: int, payload: bytes) -> bytes:
    return struct.pack("!HH", channel, len(payload)) + payload


messages = st.lists(
    st.one_of(
        st.binary(max_size=300).map(_stun),
        st.tuples(st.integers(0x4000, 0x4FFF), st.binary(max_size=300)).map(lambda t: _channel(*t)),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(1, 400), max_size=30))
def test_any_cut_of_the_stream_gives_back_every_message_whole(
    sent: list[bytes], cuts: list[int]
) -> None:
    """Reads split a stream anywhere; each message comes out once, whole, in order, with
    ChannelData's padding removed."""
    stream = b"".join(pad_channel_data(m) if m[0] & 0xC0 == 0x40 else m for m in sent)
    deframer = StreamDeframer()
    at_, out = 0, []
    for cut in [*cuts, len(stream)]:
        deframer.feed(stream[at_ : at_ + cut])
        at_ += cut
        while (message := deframer.poll_message()) is not None:
            out.append(message)
        if at_ >= len(stream):
            break
    assert out == sent
    assert deframer.broken is None and deframer.buffered == 0


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"\x80\x00\x00\x04abcd", "unknown_first_bits"),
        (b"\xc0\x01\x00\x00", "unknown_first_bits"),
        (b"\x00\x01\x00\x03" + b"\x21\x12\xa4\x42" + bytes(12) + b"abc", "stun_length_not_aligned"),
        (b"\x00\x01\x00\x00" + b"HTTP" + bytes(12), "stun_bad_cookie"),
    ],
)
def test_a_stream_out_of_step_is_a_verdict_for_good(garbage: bytes, reason: str) -> None:
    deframer = StreamDeframer()
    deframer.feed(pad_channel_data(_channel(0x4000, b"ok")))
    assert deframer.poll_message() == _channel(0x4000, b"ok")
    deframer.feed(garbage)
    assert deframer.broken == reason and deframer.counters[f"broken_{reason}"] == 1
    # nothing after it is read as messages: a byte stream cannot be resynchronised
    deframer.feed(pad_channel_data(_channel(0x4001, b"later")))
    assert deframer.poll_message() is None and deframer.counters["bytes_after_broken"] == 12


def test_a_message_longer_than_the_limit_is_refused_before_buffering_it() -> None:
    deframer = StreamDeframer(max_message=1024)
    deframer.feed(struct.pack("!HH", 0x4000, 2000) + bytes(100))
    assert deframer.broken == "message_too_large" and deframer.buffered == 0


def _client() -> TurnClient:
    return TurnClient(
        SERVER, "1:spiffe://x/device/a", "pw", random_bytes=random.Random(2).randbytes, stream=True
    )


def test_over_a_stream_a_request_is_sent_once_and_fails_after_the_stream_timeout() -> None:
    c = _client()
    c.allocate(at(0))
    assert c.poll_transmit() is not None and c.poll_transmit() is None
    for t in (0.5, 1.5, 10.0, 39.0):
        c.handle_timeout(at(t))
        assert c.poll_transmit() is None  # a reliable stream is never retransmitted on
    deadline = c.poll_timeout()
    assert deadline is not None and deadline.at == 39.5
    c.handle_timeout(at(39.5))
    assert c.poll_event() == AllocationFailed("timeout")
    assert c.counters["retransmits"] == 0 and c.counters["timeouts"] == 1


def test_answers_arrive_through_handle_stream_in_pieces() -> None:
    c = _client()
    c.allocate(at(0))
    sent, _ = c.poll_transmit() or (b"", None)
    request = stun.decode(sent)
    challenge = stun.encode(
        StunMessage(
            request.method,
            stun.ERROR,
            request.transaction_id,
            (
                stun.error_attribute(401, "Unauthorized"),
                (ATTR["REALM"], b"r"),
                (ATTR["NONCE"], b"n"),
            ),
        )
    )
    c.handle_stream(challenge[:7], at(0.1))
    assert c.poll_transmit() is None  # half a message is not an answer
    c.handle_stream(challenge[7:], at(0.1))
    again, _ = c.poll_transmit() or (b"", None)
    assert stun.decode(again).get(ATTR["USERNAME"]) == b"1:spiffe://x/device/a"


def test_garbage_on_the_stream_fails_the_allocation_with_its_reason() -> None:
    c = _client()
    c.allocate(at(0))
    c.poll_transmit()
    c.handle_stream(b"\x00\x01\x00\x00" + b"HTTP" + bytes(12), at(0.1))  # not TURN
    assert c.broken == "stun_bad_cookie"
    assert c.poll_event() == AllocationFailed("stream_stun_bad_cookie")
    assert c.counters["stream_stun_bad_cookie"] == 1
    assert c.poll_timeout() is None  # nothing left pending on a dead stream


def test_handle_stream_on_a_udp_client_is_local_misuse() -> None:
    udp = TurnClient(SERVER, "u", "p", random_bytes=os.urandom)
    with pytest.raises(RuntimeError):
        udp.handle_stream(b"\x00", at(0))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("turn:198.18.0.3", ("198.18.0.3", 3478, "udp")),
        ("turn:198.18.0.3:3479?transport=udp", ("198.18.0.3", 3479, "udp")),
        ("turn:198.18.0.3?transport=tcp", ("198.18.0.3", 3478, "tcp")),
        ("turns:198.18.0.3", ("198.18.0.3", 5349, "tls")),
        ("turns:turn.example:443?transport=tcp", ("turn.example", 443, "tls")),
        ("turn:[2001:db8::1]:3478?transport=tcp", ("2001:db8::1", 3478, "tcp")),
        ("turns:198.18.0.3?transport=udp", None),  # DTLS is not spoken
        ("turn:198.18.0.3?transport=sctp", None),
        ("stun:198.18.0.3", None),
        ("turn:198.18.0.3:99999", None),
        ("turn::3478", None),
    ],
)
def test_turn_urls(url: str, expected: tuple[str, int, str] | None) -> None:
    parsed = parse_turn_url(url)
    got = None if parsed is None else (parsed.host, parsed.port, parsed.transport)
    assert got == expected
