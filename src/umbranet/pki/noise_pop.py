"""Proof of possession of a Noise (X25519) static key, for enrollment and renewal.

X25519 keys cannot sign, so the proof is a Diffie-Hellman with a key of the controller's: the
controller hands out a *challenge* (a random nonce and an expiry) with an X25519 public key
derived from its secret and the challenge, so it needs to store nothing; the endpoint answers
with an HMAC keyed by DH(noise private key, challenge key) over the challenge, its Noise
public key and the hash of the TLS public key in its CSR. Only the holder of the Noise private
key (or the controller) can compute that DH, so nobody can register a Noise key they do not
hold (someone else's, to be mistaken for them); binding the CSR's key makes a captured proof
useless with any other certificate request.

Layout of a challenge (base64url, no padding): ``nonce (16 bytes) || expires (8 bytes, big
endian unix seconds)``. Proof: base64 of HMAC-SHA256(DH, "umbra-noise-pop-v1" || challenge
bytes || noise public key || SHA-256(CSR SubjectPublicKeyInfo DER)).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from umbranet.pki.errors import PkiError, require_utc

__all__ = [
    "CHALLENGE_LIFETIME",
    "NoiseChallenge",
    "csr_binding",
    "issue_challenge",
    "prove_noise_key",
    "verify_noise_proof",
]

CHALLENGE_LIFETIME = timedelta(minutes=5)
_LABEL = b"umbra-noise-pop-v1"
_EXPIRES = struct.Struct("!Q")
_NONCE = 16


@dataclass(frozen=True, slots=True)
class NoiseChallenge:
    """What the controller hands out: the challenge and its X25519 public key (base64)."""

    challenge: str
    public_key: str


def issue_challenge(
    secret: bytes, now: datetime, lifetime: timedelta = CHALLENGE_LIFETIME
) -> NoiseChallenge:
    """A fresh challenge whose key is derived from `secret` (the controller's)."""
    expires = int(require_utc(now).timestamp() + lifetime.total_seconds())
    raw = secrets.token_bytes(_NONCE) + _EXPIRES.pack(expires)
    key = _challenge_key(secret, raw).public_key().public_bytes_raw()
    return NoiseChallenge(_b64url(raw), base64.b64encode(key).decode("ascii"))


def csr_binding(csr: x509.CertificateSigningRequest) -> bytes:
    """SHA-256 of the CSR's public key (SubjectPublicKeyInfo DER): what a proof is bound to."""
    der = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def prove_noise_key(noise_private_key: bytes, challenge: NoiseChallenge, binding: bytes) -> str:
    """The endpoint's proof (base64) for `challenge`, bound to its CSR (`csr_binding`)."""
    private = x25519.X25519PrivateKey.from_private_bytes(noise_private_key)
    try:
        peer = x25519.X25519PublicKey.from_public_bytes(base64.b64decode(challenge.public_key))
    except (binascii.Error, ValueError) as exc:
        raise PkiError("noise_proof_invalid", "the challenge key is not an X25519 key") from exc
    shared = private.exchange(peer)
    noise_public = private.public_key().public_bytes_raw()
    raw = _unb64url(challenge.challenge)
    return base64.b64encode(_mac(shared, raw, noise_public, binding)).decode("ascii")


def verify_noise_proof(
    secret: bytes,
    noise_public_key: bytes,
    binding: bytes,
    *,
    challenge: str,
    proof: str,
    now: datetime,
) -> None:
    """Check a proof; raises PkiError ``noise_proof_invalid`` (malformed, expired, wrong)."""
    raw = _unb64url(challenge)
    if len(raw) != _NONCE + _EXPIRES.size:
        raise PkiError("noise_proof_invalid", "the challenge is malformed")
    (expires,) = _EXPIRES.unpack(raw[_NONCE:])
    if require_utc(now).timestamp() >= expires:
        raise PkiError("noise_proof_invalid", "the challenge has expired; fetch a new one")
    try:
        peer = x25519.X25519PublicKey.from_public_bytes(noise_public_key)
        given = base64.b64decode(proof, validate=True)
        shared = _challenge_key(secret, raw).exchange(peer)
    except (binascii.Error, ValueError) as exc:
        raise PkiError("noise_proof_invalid", "the proof or the Noise key is malformed") from exc
    if not hmac.compare_digest(given, _mac(shared, raw, noise_public_key, binding)):
        raise PkiError("noise_proof_invalid", "the proof does not show possession of the Noise key")


def _challenge_key(secret: bytes, raw: bytes) -> x25519.X25519PrivateKey:
    seed = hmac.new(secret, b"umbra-noise-challenge-v1" + raw, hashlib.sha256).digest()
    return x25519.X25519PrivateKey.from_private_bytes(seed)


def _mac(shared: bytes, raw: bytes, noise_public: bytes, binding: bytes) -> bytes:
    return hmac.new(shared, _LABEL + raw + noise_public + binding, hashlib.sha256).digest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    if len(text) > 64:
        raise PkiError("noise_proof_invalid", "the challenge is malformed")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise PkiError("noise_proof_invalid", "the challenge is malformed") from exc
