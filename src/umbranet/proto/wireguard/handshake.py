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

import contextlib
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
    "StaticKey",
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


class StaticKey:
    """A device's static key pair, with what a handshake derives from it alone kept.

    X25519 is most of a handshake's CPU: computed afresh, each side does six scalar
    multiplications. Two depend on nothing the handshake brings: the own public key and the
    static-static secret with a configured peer. They are computed once (the latter when the
    peer is added, `remember`), leaving four per side (`bench/wg_handshake_cpu.py` times
    it). Only keys the device configured are kept, so a stranger's key in an initiation adds
    nothing to the table.
    """

    __slots__ = ("_shared", "private", "public", "responder_hash")

    def __init__(self, private: bytes) -> None:
        self.private = private
        self.public = public_key(private)
        # h after mixing the responder's key: the first step of every initiation to us
        self.responder_hash = hash_(INITIAL_HASH, self.public)
        self._shared: dict[bytes, bytes] = {}

    def remember(self, peer_public: bytes) -> None:
        """Compute and keep the static-static secret with a configured peer (a low-order key
        is not kept: its handshakes fail as before, in `shared_with`)."""
        if peer_public not in self._shared:
            with contextlib.suppress(AeadError):
                self._shared[peer_public] = dh(self.private, peer_public)

    def forget(self, peer_public: bytes) -> None:
        self._shared.pop(peer_public, None)

    def shared_with(self, peer_public: bytes) -> bytes:
        """DH(own static, peer static); AeadError for a low-order key."""
        shared = self._shared.get(peer_public)
        return dh(self.private, peer_public) if shared is None else shared


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
    static: StaticKey,
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
    encrypted_static = aead_seal(key, 0, static.public, h)
    h = hash_(h, encrypted_static)
    ck, key = kdf2(ck, static.shared_with(peer_public))
    encrypted_timestamp = aead_seal(key, 0, timestamp, h)
    h = hash_(h, encrypted_timestamp)
    body = encode_initiation_body(sender, ephemeral_public, encrypted_static, encrypted_timestamp)
    return body, InitiatorState(sender, ck, h, ephemeral_private)


def consume_initiation(static: StaticKey, message: Initiation) -> ConsumedInitiation:
    """Verify a type-1 message addressed to `static`'s owner; who sent it is inside."""
    ck = kdf1(INITIAL_CHAIN_KEY, message.ephemeral)
    h = hash_(static.responder_hash, message.ephemeral)
    try:
        ck, key = kdf2(ck, dh(static.private, message.ephemeral))
        peer_public = aead_open(key, 0, message.encrypted_static, h)
        h = hash_(h, message.encrypted_static)
        ck, key = kdf2(ck, static.shared_with(peer_public))
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
    state: InitiatorState, static: StaticKey, psk: bytes | None, message: Response
) -> SessionKeys:
    """Verify a type-2 message answering `state`; the initiator's keys."""
    ck = kdf1(state.chaining_key, message.ephemeral)
    h = hash_(state.hash, message.ephemeral)
    try:
        ck = kdf1(ck, dh(state.ephemeral_private, message.ephemeral))
        ck = kdf1(ck, dh(static.private, message.ephemeral))
        ck, tau, key = kdf3(ck, psk or ZERO_PSK)
        h = hash_(h, tau)
        aead_open(key, 0, message.encrypted_nothing, h)
    except AeadError:
        raise HandshakeError("response_decrypt_failed") from None
    initiator_send, responder_send = kdf2(ck, b"")
    return SessionKeys(send=initiator_send, receive=responder_send, initiator=True)
