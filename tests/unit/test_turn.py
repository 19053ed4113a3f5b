"""TURN client machine without a server: authentication retry, garbage, foreign sources."""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.clock import Instant
from umbranet.proto import stun
from umbranet.proto.stun import ATTR, StunMessage
from umbranet.proto.turn import Allocated, AllocationFailed, DataReceived, TurnClient

SERVER = ("198.18.0.1", 3478)


def at(t: float) -> Instant:
    return Instant(t, datetime(2026, 12, 4, tzinfo=UTC))


def client() -> TurnClient:
    return TurnClient(
        SERVER, "123:spiffe://x/device/a", "pw", random_bytes=random.Random(1).randbytes
    )


def answer(
    request: bytes, cls: int, attrs: tuple[tuple[int, bytes], ...], key: bytes | None = None
) -> bytes:
    message = stun.decode(request)
    return stun.encode(
        StunMessage(message.method, cls, message.transaction_id, attrs), integrity_key=key
    )


def test_allocate_retries_with_credentials_after_401_and_checks_integrity() -> None:
    c = client()
    c.allocate(at(0))
    first, _ = c.poll_transmit() or (b"", None)
    assert stun.decode(first).get(ATTR["USERNAME"]) is None
    challenge = answer(
        first,
        stun.ERROR,
        (stun.error_attribute(401, "Unauthorized"), (ATTR["REALM"], b"r"), (ATTR["NONCE"], b"n1")),
    )
    assert c.handle_datagram(challenge, SERVER, at(0.1))
    second, _ = c.poll_transmit() or (b"", None)
    key = stun.long_term_key("123:spiffe://x/device/a", "r", "pw")
    request = stun.decode(second)
    assert request.get(ATTR["USERNAME"]) == b"123:spiffe://x/device/a"
    assert request.verify_integrity(key)
    relayed = stun.encode_xor_address(("198.18.0.1", 50000), request.transaction_id)
    forged = answer(second, stun.SUCCESS, ((ATTR["XOR-RELAYED-ADDRESS"], relayed),), key=b"bad")
    assert c.handle_datagram(forged, SERVER, at(0.2))
    assert c.poll_event() is None and c.counters["drop_bad_integrity"] == 1
    good = answer(
        second,
        stun.SUCCESS,
        ((ATTR["XOR-RELAYED-ADDRESS"], relayed), (ATTR["LIFETIME"], struct.pack("!I", 600))),
        key=key,
    )
    assert c.handle_datagram(good, SERVER, at(0.2))
    assert c.poll_event() == Allocated(("198.18.0.1", 50000), None, 600)
    deadline = c.poll_timeout()
    assert deadline is not None and deadline.at == 0.2 + 450


def test_a_second_401_is_a_failure_not_a_loop() -> None:
    c = client()
    c.allocate(at(0))
    for _ in range(2):
        sent, _ = c.poll_transmit() or (b"", None)
        c.handle_datagram(
            answer(
                sent,
                stun.ERROR,
                (
                    stun.error_attribute(401, "Unauthorized"),
                    (ATTR["REALM"], b"r"),
                    (ATTR["NONCE"], b"n"),
                ),
            ),
            SERVER,
            at(0),
        )
    assert isinstance(c.poll_event(), AllocationFailed)
    assert c.poll_transmit() is None


def test_unanswered_allocate_times_out() -> None:
    c = client()
    c.allocate(at(0))
    t = 0.0
    for _ in range(10):
        deadline = c.poll_timeout()
        if deadline is None:
            break
        t = deadline.at
        c.handle_timeout(at(t))
    assert c.poll_event() == AllocationFailed("timeout")


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_garbage_from_the_server_is_counted_and_from_others_left_alone(data: bytes) -> None:
    c = client()
    c.handle_datagram(data, SERVER, at(0))
    event = c.poll_event()
    assert event is None or isinstance(event, DataReceived)
    assert not c.handle_datagram(data, ("198.18.9.9", 1), at(0))
