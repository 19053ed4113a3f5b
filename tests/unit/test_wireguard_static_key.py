"""A device's static key keeps what a handshake derives from it alone, and nothing else.

The handshake's X25519 count is what a handshake flood costs a responder; these tests pin it
down (a count of operations, not a time) and check that keeping secrets changes no byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from umbranet.proto.wireguard import crypto, handshake
from umbranet.proto.wireguard.crypto import AeadError, public_key, tai64n
from umbranet.proto.wireguard.handshake import (
    StaticKey,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from umbranet.proto.wireguard.messages import parse_initiation, parse_response


def _key(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


I_STATIC, R_STATIC = _key("initiator"), _key("responder")
STAMP = tai64n(datetime(2026, 12, 5, 12, 0, tzinfo=UTC))


@pytest.fixture
def scalar_mults(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every X25519 scalar multiplication the handshake module does, by name, in order."""
    done: list[str] = []

    def counting(name: str, real: Callable[..., bytes]) -> Callable[..., bytes]:
        def wrapper(*args: bytes) -> bytes:
            done.append(name)
            return real(*args)

        return wrapper

    monkeypatch.setattr(handshake, "dh", counting("dh", crypto.dh))
    monkeypatch.setattr(handshake, "public_key", counting("public_key", crypto.public_key))
    yield done


def _configured_pair() -> tuple[StaticKey, StaticKey]:
    initiator, responder = StaticKey(I_STATIC), StaticKey(R_STATIC)
    initiator.remember(responder.public)
    responder.remember(initiator.public)
    return initiator, responder


def _handshake(initiator: StaticKey, responder: StaticKey) -> tuple[bytes, bytes]:
    body, state = create_initiation(initiator, responder.public, _key("ie"), 1, STAMP)
    consumed = consume_initiation(responder, parse_initiation(body + bytes(32)))
    response, r_keys = create_response(consumed, None, _key("re"), 2)
    i_keys = consume_response(state, initiator, None, parse_response(response + bytes(32)))
    assert i_keys.send == r_keys.receive and i_keys.receive == r_keys.send
    return body, response


def test_kept_secrets_change_no_byte_of_the_handshake() -> None:
    fresh = _handshake(StaticKey(I_STATIC), StaticKey(R_STATIC))
    assert _handshake(*_configured_pair()) == fresh


def test_a_handshake_with_a_configured_peer_costs_four_scalar_multiplications_a_side(
    scalar_mults: list[str],
) -> None:
    initiator, responder = _configured_pair()
    scalar_mults.clear()
    body, state = create_initiation(initiator, responder.public, _key("ie"), 1, STAMP)
    consumed = consume_initiation(responder, parse_initiation(body + bytes(32)))
    response, _ = create_response(consumed, None, _key("re"), 2)
    responder_side = len(scalar_mults) - 2  # the initiation's two are the initiator's
    consume_response(state, initiator, None, parse_response(response + bytes(32)))
    # initiator: own ephemeral public key, DH(e, rs), then DH(e, re), DH(s, re)
    # responder: DH(s, ie), then own ephemeral public key, DH(e, ie), DH(e, is)
    assert len(scalar_mults) == 8
    assert responder_side == 4


def test_a_strangers_key_is_computed_each_time_and_not_kept(scalar_mults: list[str]) -> None:
    own = StaticKey(R_STATIC)
    stranger = public_key(_key("stranger"))
    assert own.shared_with(stranger) == own.shared_with(stranger)
    assert scalar_mults.count("dh") == 2
    own.remember(stranger)
    own.shared_with(stranger)
    assert scalar_mults.count("dh") == 3  # the one `remember` did
    own.forget(stranger)
    own.shared_with(stranger)
    assert scalar_mults.count("dh") == 4


def test_a_low_order_peer_key_is_not_kept_and_its_handshakes_fail() -> None:
    own = StaticKey(R_STATIC)
    own.remember(bytes(32))  # configuring such a peer does not fail...
    with pytest.raises(AeadError):
        own.shared_with(bytes(32))  # ...its handshakes do, as before
