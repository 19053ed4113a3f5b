"""The WireGuard handshake: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, step by step (section 5.4).

Four pure functions, one per message and side. They hold no tables and no timers: the
device decides who may handshake, checks MACs first (so a forged packet costs a BLAKE2s and
nothing more) and stores what these return. Each failure raises `HandshakeError` with a short
reason (the peer's fault), which the device counts.

    initiator                                   responder
    create_initiation  --- type 1 (148) --->    consume_initiation, create_response
    consume_response   <--- type 2 (92) ----
    both: (send key, receive key) = KDF2(chaining key, "") in initiator order

It is Noise IKpsk2 exactly: prologue = IDENTIFIER, the initiation's payload is the TAI64N
timestamp, the response's payload is empty, and the pre-shared key (all zeros when none is
configured) is mixed in last. `tests/unit/test_wireguard_vectors.py` checks the bytes against
the generic Noise implementation in `umbranet.proto.noise`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from umbranet.proto.wireguard.crypto import (
    AeadError,
    aead_open,
    aead_seal,
    dh,
    hash_,
    kdf1,
    kdf2,
    kdf3,
    public_key,
)
from umbranet.proto.wireguard.messages import (
    Initiation,
    Response,
    encode_initiation_body,
    encode_response_body,
)

__all__ = [
    "CONSTRUCTION",
    "IDENTIFIER",
    "INITIAL_CHAIN_KEY",
    "INITIAL_HASH",
    "ConsumedInitiation",
    "HandshakeError",
    "InitiatorState",
    "SessionKeys",
    "consume_initiation",
    "consume_response",
    "create_initiation",
    "create_response",
]

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
INITIAL_CHAIN_KEY = hash_(CONSTRUCTION)
INITIAL_HASH = hash_(INITIAL_CHAIN_KEY, IDENTIFIER)
ZERO_PSK = bytes(32)


class HandshakeError(Exception):
    """A handshake message did not verify; `reason` is the counter name the device uses."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The transport keys one side derived; `initiator` says which side it is."""

    send: bytes = field(repr=False)
    receive: bytes = field(repr=False)
    initiator: bool


@dataclass(frozen=True, slots=True)
class InitiatorState:
    """What the initiator keeps between sending type 1 and receiving type 2."""

    sender: int
    chaining_key: bytes = field(repr=False)
    hash: bytes
    ephemeral_private: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ConsumedInitiation:
    """A verified initiation: who sent it, its timestamp, and the state for the response."""

    peer_public: bytes
    timestamp: bytes
    sender: int
    remote_ephemeral: bytes
    chaining_key: bytes = field(repr=False)
    hash: bytes


def create_initiation(
    static_private: bytes,
    peer_public: bytes,
    ephemeral_private: bytes,
    sender: int,
    timestamp: bytes,
) -> tuple[bytes, InitiatorState]:
    """Bytes 0..115 of a type-1 message and the state to finish the handshake with."""
    h = hash_(INITIAL_HASH, peer_public)
    ephemeral_public = public_key(ephemeral_private)
    ck = kdf1(INITIAL_CHAIN_KEY, ephemeral_public)
    h = hash_(h, ephemeral_public)
    ck, key = kdf2(ck, dh(ephemeral_private, peer_public))
    encrypted_static = aead_seal(key, 0, public_key(static_private), h)
    h = hash_(h, encrypted_static)
    ck, key = kdf2(ck, dh(static_private, peer_public))
    encrypted_timestamp = aead_seal(key, 0, timestamp, h)
    h = hash_(h, encrypted_timestamp)
    body = encode_initiation_body(sender, ephemeral_public, encrypted_static, encrypted_timestamp)
    return body, InitiatorState(sender, ck, h, ephemeral_private)


def consume_initiation(static_private: bytes, message: Initiation) -> ConsumedInitiation:
    """Verify a type-1 message addressed to `static_private`'s owner; who sent it is inside."""
    own_public = public_key(static_private)
    h = hash_(INITIAL_HASH, own_public)
    ck = kdf1(INITIAL_CHAIN_KEY, message.ephemeral)
    h = hash_(h, message.ephemeral)
    try:
        ck, key = kdf2(ck, dh(static_private, message.ephemeral))
        peer_public = aead_open(key, 0, message.encrypted_static, h)
        h = hash_(h, message.encrypted_static)
        ck, key = kdf2(ck, dh(static_private, peer_public))
        timestamp = aead_open(key, 0, message.encrypted_timestamp, h)
    except AeadError:
        raise HandshakeError("initiation_decrypt_failed") from None
    h = hash_(h, message.encrypted_timestamp)
    return ConsumedInitiation(peer_public, timestamp, message.sender, message.ephemeral, ck, h)


def create_response(
    consumed: ConsumedInitiation,
    psk: bytes | None,
    ephemeral_private: bytes,
    sender: int,
) -> tuple[bytes, SessionKeys]:
    """Bytes 0..59 of a type-2 message answering `consumed`, and the responder's keys."""
    ephemeral_public = public_key(ephemeral_private)
    ck = kdf1(consumed.chaining_key, ephemeral_public)
    h = hash_(consumed.hash, ephemeral_public)
    try:
        ck = kdf1(ck, dh(ephemeral_private, consumed.remote_ephemeral))
        ck = kdf1(ck, dh(ephemeral_private, consumed.peer_public))
    except AeadError:
        raise HandshakeError("low_order_key") from None
    ck, tau, key = kdf3(ck, psk or ZERO_PSK)
    h = hash_(h, tau)
    encrypted_nothing = aead_seal(key, 0, b"", h)
    body = encode_response_body(sender, consumed.sender, ephemeral_public, encrypted_nothing)
    initiator_send, responder_send = kdf2(ck, b"")
    return body, SessionKeys(send=responder_send, receive=initiator_send, initiator=False)


def consume_response(
    state: InitiatorState, static_private: bytes, psk: bytes | None, message: Response
) -> SessionKeys:
    """Verify a type-2 message answering `state`; the initiator's keys."""
    ck = kdf1(state.chaining_key, message.ephemeral)
    h = hash_(state.hash, message.ephemeral)
    try:
        ck = kdf1(ck, dh(state.ephemeral_private, message.ephemeral))
        ck = kdf1(ck, dh(static_private, message.ephemeral))
        ck, tau, key = kdf3(ck, psk or ZERO_PSK)
        h = hash_(h, tau)
        aead_open(key, 0, message.encrypted_nothing, h)
    except AeadError:
        raise HandshakeError("response_decrypt_failed") from None
    initiator_send, responder_send = kdf2(ck, b"")
    return SessionKeys(send=initiator_send, receive=responder_send, initiator=True)
