"""WireGuard's primitives, each a small pure function named as in the whitepaper (section 5.4).

Why our own: WireGuard fixes one suite (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s) and adds two
things Noise does not have, keyed BLAKE2s-128 MACs and XChaCha20-Poly1305 for cookies.
`cryptography` has X25519 and ChaCha20-Poly1305 but no XChaCha, so HChaCha20 (the 20-round
core that turns a 256-bit key and the first 16 nonce bytes into a subkey) is written here in a
few lines; it only runs for cookie replies, never on the data path.

    HASH(x)        BLAKE2s-256
    MAC(k, x)      keyed BLAKE2s, 16-byte output
    HMAC(k, x)     HMAC-BLAKE2s (64-byte block)
    KDFn(k, x)     HKDF over HMAC-BLAKE2s, n = 1..3 outputs of 32 bytes
    AEAD(k, n, p, a)   ChaCha20-Poly1305, nonce = 4 zero bytes || n as 64-bit little-endian
    XAEAD(k, n, p, a)  XChaCha20-Poly1305, 24-byte nonce
    TAI64N(wall)   12 bytes, big-endian seconds since 1970 + 2**62 + 10, then nanoseconds
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import struct
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = [
    "KEY_LEN",
    "TAG_LEN",
    "AeadError",
    "aead_open",
    "aead_seal",
    "dh",
    "hash_",
    "hchacha20",
    "hmac",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "public_key",
    "tai64n",
    "xaead_open",
    "xaead_seal",
]

KEY_LEN = 32
TAG_LEN = 16
_ZERO_NONCE_PREFIX = b"\x00\x00\x00\x00"
# 2**62 + 10: TAI64's label for "seconds since 1970 TAI" (the 10 is TAI-UTC in 1970).
_TAI64_BASE = 0x400000000000000A
# Nanoseconds are rounded down to 2**24 ns (about 16.8 ms), as the reference implementations do,
# so the timestamp does not leak the sender's fine-grained clock to an observer who can decrypt.
_WHITEN_MASK = (1 << 24) - 1


class AeadError(Exception):
    """Authentication failed: the peer's fault (forged, corrupted, wrong key or replayed)."""


def hash_(*parts: bytes) -> bytes:
    """HASH(a || b || ...): BLAKE2s-256 of the concatenation."""
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, data): keyed BLAKE2s with a 16-byte digest (MAC1, MAC2, cookies)."""
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s (RFC 2104 over BLAKE2s-256, not BLAKE2s's own keyed mode)."""
    return _hmac.digest(key, data, "blake2s")


def kdf1(key: bytes, data: bytes) -> bytes:
    """KDF1: the first HKDF output."""
    t0 = hmac(key, data)
    return hmac(t0, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """KDF2: the first two HKDF outputs."""
    t0 = hmac(key, data)
    t1 = hmac(t0, b"\x01")
    return t1, hmac(t0, t1 + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """KDF3: the first three HKDF outputs (the psk step of the handshake)."""
    t0 = hmac(key, data)
    t1 = hmac(t0, b"\x01")
    t2 = hmac(t0, t1 + b"\x02")
    return t1, t2, hmac(t0, t2 + b"\x03")


def dh(private: bytes, public: bytes) -> bytes:
    """X25519. Raises AeadError for a low-order public key (an all-zero shared secret)."""
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError as exc:  # cryptography refuses an all-zero result
        raise AeadError("low-order public key") from exc


def public_key(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def aead_seal(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD(key, counter, plaintext, ad) as WireGuard uses it."""
    nonce = _ZERO_NONCE_PREFIX + counter.to_bytes(8, "little")
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Open what `aead_seal` sealed; AeadError if it does not authenticate."""
    nonce = _ZERO_NONCE_PREFIX + counter.to_bytes(8, "little")
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, ad)
    except InvalidTag:
        raise AeadError("AEAD authentication failed") from None


_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_M32 = 0xFFFFFFFF


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & _M32
    x = s[d] ^ s[a]
    s[d] = ((x << 16) | (x >> 16)) & _M32
    s[c] = (s[c] + s[d]) & _M32
    x = s[b] ^ s[c]
    s[b] = ((x << 12) | (x >> 20)) & _M32
    s[a] = (s[a] + s[b]) & _M32
    x = s[d] ^ s[a]
    s[d] = ((x << 8) | (x >> 24)) & _M32
    s[c] = (s[c] + s[d]) & _M32
    x = s[b] ^ s[c]
    s[b] = ((x << 7) | (x >> 25)) & _M32


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha section 2.2): a 32-byte subkey.

    The ChaCha20 block function's 20 rounds without the final addition of the input state,
    keeping words 0-3 and 12-15.
    """
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("HChaCha20 takes a 32-byte key and a 16-byte nonce")
    s = [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce16)]
    for _ in range(10):
        _quarter(s, 0, 4, 8, 12)
        _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14)
        _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15)
        _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13)
        _quarter(s, 3, 4, 9, 14)
    return struct.pack("<8I", *s[0:4], *s[12:16])


def xaead_seal(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305 seal (the cookie reply's `encrypted_cookie`)."""
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).encrypt(_ZERO_NONCE_PREFIX + nonce24[16:24], plaintext, ad)


def xaead_open(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305 open; AeadError if it does not authenticate."""
    subkey = hchacha20(key, nonce24[:16])
    try:
        return ChaCha20Poly1305(subkey).decrypt(_ZERO_NONCE_PREFIX + nonce24[16:24], ciphertext, ad)
    except InvalidTag:
        raise AeadError("XAEAD authentication failed") from None


def tai64n(wall: datetime) -> bytes:
    """TAI64N of a wall-clock moment (12 bytes, compares correctly as bytes)."""
    seconds = int(wall.timestamp() // 1)
    nanos = wall.microsecond * 1000
    return struct.pack(">QI", _TAI64_BASE + seconds, nanos & ~_WHITEN_MASK)
