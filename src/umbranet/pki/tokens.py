"""The signed-token codec shared by session tickets and enrollment tokens.

Format: ``<prefix>.<b64url(claims JSON)>.<b64url(Ed25519 signature)>``, base64url without
padding. The signature covers ``<prefix>.<b64url(claims)>``, so a ticket (prefix ``ut1``) can
never be replayed as an enrollment token (``ue1``) or the other way round. The key that signed
is named by the ``kid`` claim.

Parsing is strict because tokens arrive from peers: at most `MAX_TOKEN_LENGTH` ASCII chars,
exactly three parts, canonical base64url, a 64-byte signature, a JSON object without duplicate
keys or NaN. Every failure raises `TokenFormatError`, which `tickets` and `enrollment` map to
their own error codes; nothing else escapes for any input string.
"""

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = [
    "MAX_TOKEN_LENGTH",
    "DecodedToken",
    "TokenFormatError",
    "claim_int",
    "claim_str",
    "decode_token",
    "encode_token",
    "require_keys",
]

MAX_TOKEN_LENGTH = 8 * 1024
_SIGNATURE_LENGTH = 64
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_MAX_TIMESTAMP = 2**53  # beyond any plausible clock; keeps float comparisons exact


class TokenFormatError(Exception):
    """The token is not well formed; ``reason`` says why (never includes the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DecodedToken:
    """A structurally valid token whose signature is not yet checked."""

    claims: dict[str, Any]
    signed: bytes
    signature: bytes

    def signature_valid(self, public_key: ed25519.Ed25519PublicKey) -> bool:
        """Verify the signature; a good result is remembered for these exact bytes and key.

        The same ticket comes back on every dial for its lifetime, and Ed25519 verification
        is ~60 us of a dial's budget. Only positive results are cached, keyed by the signed
        bytes, the signature and the raw key, so nothing unverified can ever hit the cache;
        time, epoch and claims are still checked by the caller on every use.
        """
        key = (self.signed, self.signature, public_key.public_bytes_raw())
        if key in _GOOD_SIGNATURES:
            return True
        try:
            public_key.verify(self.signature, self.signed)
        except InvalidSignature:
            return False
        if len(_GOOD_SIGNATURES) >= _CACHE_LIMIT:
            _GOOD_SIGNATURES.clear()
        _GOOD_SIGNATURES.add(key)
        return True


_CACHE_LIMIT = 4096
_GOOD_SIGNATURES: set[tuple[bytes, bytes, bytes]] = set()


def encode_token(
    prefix: str, claims: Mapping[str, object], private_key: ed25519.Ed25519PrivateKey
) -> str:
    """Serialize and sign ``claims`` under ``prefix``."""
    body = json.dumps(dict(claims), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    signed = f"{prefix}.{_b64encode(body.encode('ascii'))}"
    signature = private_key.sign(signed.encode("ascii"))
    token = f"{signed}.{_b64encode(signature)}"
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"token longer than {MAX_TOKEN_LENGTH} chars")
    return token


def decode_token(token: object, prefix: str) -> DecodedToken:
    """Parse ``token`` strictly, expecting ``prefix``; raises `TokenFormatError`."""
    if not isinstance(token, str):
        raise TokenFormatError("token must be a string")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenFormatError(f"token longer than {MAX_TOKEN_LENGTH} chars")
    if not token.isascii():
        raise TokenFormatError("token must be ASCII")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenFormatError("token must have three dot-separated parts")
    if parts[0] != prefix:
        raise TokenFormatError(f"token prefix must be {prefix!r}")
    body = _b64decode(parts[1])
    signature = _b64decode(parts[2])
    if len(signature) != _SIGNATURE_LENGTH:
        raise TokenFormatError("token signature must be 64 bytes")
    try:
        claims = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError) as exc:
        raise TokenFormatError("token claims are not valid JSON") from exc
    if not isinstance(claims, dict):
        raise TokenFormatError("token claims must be a JSON object")
    return DecodedToken(claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def claim_str(claims: Mapping[str, Any], name: str, max_length: int = 256) -> str:
    """A required non-empty string claim of at most ``max_length`` chars."""
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise TokenFormatError(f"claim {name!r} must be a non-empty string")
    return value


def claim_int(claims: Mapping[str, Any], name: str) -> int:
    """A required non-negative integer claim (unix seconds); booleans are not integers."""
    value = claims.get(name)
    if type(value) is not int or not 0 <= value <= _MAX_TIMESTAMP:
        raise TokenFormatError(f"claim {name!r} must be a non-negative integer")
    return value


def require_keys(claims: Mapping[str, Any], expected: frozenset[str]) -> None:
    """The claims must have exactly ``expected`` keys: unknown claims mean a format we lack."""
    if set(claims) != expected:
        raise TokenFormatError(f"token claims must be exactly {sorted(expected)}")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenFormatError("token part is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenFormatError("token part is not base64url") from exc
    if _b64encode(data) != text:
        # Non-zero padding bits: another spelling of the same bytes; refuse malleability.
        raise TokenFormatError("token part is not canonical base64url")
    return data


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise TokenFormatError(f"duplicate claim {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise TokenFormatError(f"{name} is not allowed in token claims")
