"""Authenticated connectivity probes between two peers (the sealing only; `proto/ice.py`
runs the checks).

A probe proves "the peer holding this X25519 static key heard me at this address". Both
sides already hold each other's static public key (the identity's Noise key, learned only
through the controller's filtered view, so only pairs policy allows can seal to each other),
so the key is static-static DH, no handshake:

    key = BLAKE2s-256(key="umbranet probe v1", data=DH(a, B) || min(A, B) || max(A, B))

Layout (shares the WireGuard UDP port; the first byte 0xF5 is neither a WireGuard type,
1-4, nor a STUN first byte, whose top two bits are zero)::

    0 magic "\\xf5UPB" (4)   4 kind: 1 ping, 2 pong (1)   5 sender key id (8)
   13 nonce (12)            25 ChaCha20-Poly1305(key, nonce, plaintext, ad = bytes 0..25)
    plaintext: transaction id (12) | sender's wall clock, ms (u64)
               pong only: the address the ping came from: family 4/6 (1) | port (2) | ip (16)

The key id is BLAKE2s-64 of the sender's public key, so the receiver finds the key without
trying each peer. A ping is answered only when it opens, its clock is within `WINDOW`
seconds of ours and its nonce is not in the replay cache; a pong only matches a ping we sent
(by transaction id), so a replayed pong proves nothing. Nothing unauthenticated is answered.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = [
    "MAGIC",
    "PING",
    "PONG",
    "WINDOW",
    "Probe",
    "ProbeError",
    "is_probe",
    "key_id",
    "open_probe",
    "pair_key",
    "peek_key_id",
    "seal_probe",
]

MAGIC = b"\xf5UPB"
PING, PONG = 1, 2
WINDOW = 60.0  # seconds of clock difference a ping may carry
_HEAD = 25
_TAG = 16
_PLAIN = struct.Struct("!12sQ")
_ADDR = struct.Struct("!BH16s")

Address = tuple[str, int]


class ProbeError(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Probe:
    kind: int
    txid: bytes
    sent_ms: int
    nonce: bytes
    observed: Address | None  # pongs: where the ping came from, as the answering peer saw it


def key_id(public_key: bytes) -> bytes:
    return hashlib.blake2s(public_key, digest_size=8, person=b"umbprid").digest()


def pair_key(private_key: bytes, own_public: bytes, peer_public: bytes) -> bytes:
    """The symmetric key both ends of a pair derive; ValueError for a low-order peer key."""
    shared = X25519PrivateKey.from_private_bytes(private_key).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )
    low, high = sorted((own_public, peer_public))
    return hashlib.blake2s(shared + low + high, key=b"umbranet probe v1").digest()


def is_probe(data: bytes) -> bool:
    return data[:4] == MAGIC


def peek_key_id(data: bytes) -> bytes:
    if len(data) < _HEAD + _PLAIN.size + _TAG or not is_probe(data):
        raise ProbeError("bad_length")
    return data[5:13]


def seal_probe(
    key: bytes,
    sender_id: bytes,
    kind: int,
    *,
    txid: bytes,
    sent_ms: int,
    nonce: bytes,
    observed: Address | None = None,
) -> bytes:
    head = MAGIC + bytes([kind]) + sender_id + nonce
    plain = _PLAIN.pack(txid, sent_ms)
    if observed is not None:
        ip = ipaddress.ip_address(observed[0])
        plain += _ADDR.pack(ip.version, observed[1], ip.packed.rjust(16, b"\0"))
    return head + ChaCha20Poly1305(key).encrypt(nonce, plain, head)


def open_probe(key: bytes, data: bytes) -> Probe:
    """The probe inside `data`, or ProbeError (`bad_length`, `bad_kind`, `decrypt_failed`)."""
    peek_key_id(data)
    kind = data[4]
    if kind not in (PING, PONG):
        raise ProbeError("bad_kind")
    expect = _PLAIN.size + (_ADDR.size if kind == PONG else 0) + _TAG
    if len(data) != _HEAD + expect:
        raise ProbeError("bad_length")
    nonce = data[13:25]
    try:
        plain = ChaCha20Poly1305(key).decrypt(nonce, data[_HEAD:], data[:_HEAD])
    except InvalidTag:
        raise ProbeError("decrypt_failed") from None
    txid, sent_ms = _PLAIN.unpack_from(plain)
    observed: Address | None = None
    if kind == PONG:
        version, port, raw = _ADDR.unpack_from(plain, _PLAIN.size)
        if version == 4:
            observed = (str(ipaddress.IPv4Address(raw[12:])), port)
        elif version == 6:
            observed = (str(ipaddress.IPv6Address(raw)), port)
        else:
            raise ProbeError("bad_address")
    return Probe(kind, txid, sent_ms, nonce, observed)
