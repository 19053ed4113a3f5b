"""Enrollment tokens: the one-time, expiring invitation that bootstraps an identity.

The controller signs one per identity; the enrollee presents it with a CSR at ``/v1/enroll``.
Before trusting the controller it fetches the bundle from, the enrollee reads the token
*unverified* (`read_enrollment_token_unverified`) to learn the controller URL and the CA
fingerprint it must pin; then it can verify the token against the pinned bundle's keys. One
use is enforced by the controller's store, not here.

Claims (unix seconds)::

    {"jti": token id, "sub": SPIFFE ID, "ctl": controller URL,
     "caf": sha256 hex of the CA certificate DER, "iat", "exp", "kid"}
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from umbranet.pki.errors import PkiError, require_utc
from umbranet.pki.spiffe_id import SpiffeId
from umbranet.pki.tickets import ISSUED_AT_SKEW
from umbranet.pki.tokens import (
    DecodedToken,
    TokenFormatError,
    claim_int,
    claim_str,
    decode_token,
    require_keys,
)

__all__ = [
    "ENROLLMENT_LIFETIME",
    "ENROLLMENT_PREFIX",
    "EnrollmentClaims",
    "read_enrollment_token_unverified",
    "verify_enrollment_token",
]

ENROLLMENT_PREFIX = "ue1"
ENROLLMENT_LIFETIME = timedelta(hours=24)

_CLAIMS = frozenset({"jti", "sub", "ctl", "caf", "iat", "exp", "kid"})
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class EnrollmentClaims:
    """The content of an enrollment token."""

    token_id: str
    spiffe_id: str
    controller_url: str
    ca_fingerprint: str
    issued_at: int
    expires_at: int
    key_id: str

    def to_claims(self) -> dict[str, Any]:
        return {
            "jti": self.token_id,
            "sub": self.spiffe_id,
            "ctl": self.controller_url,
            "caf": self.ca_fingerprint,
            "iat": self.issued_at,
            "exp": self.expires_at,
            "kid": self.key_id,
        }

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> "EnrollmentClaims":
        """Validate the claim set; raises `TokenFormatError`."""
        require_keys(claims, _CLAIMS)
        subject = claim_str(claims, "sub", 2048)
        try:
            SpiffeId.parse(subject)
        except PkiError as exc:
            raise TokenFormatError(f"claim 'sub' is not a SPIFFE ID: {exc.reason}") from exc
        fingerprint = claim_str(claims, "caf")
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise TokenFormatError("claim 'caf' must be 64 lowercase hex chars")
        issued_at, expires_at = claim_int(claims, "iat"), claim_int(claims, "exp")
        if expires_at <= issued_at:
            raise TokenFormatError("token expires before it was issued")
        return cls(
            token_id=claim_str(claims, "jti", 128),
            spiffe_id=subject,
            controller_url=claim_str(claims, "ctl", 2048),
            ca_fingerprint=fingerprint,
            issued_at=issued_at,
            expires_at=expires_at,
            key_id=claim_str(claims, "kid", 64),
        )


def verify_enrollment_token(
    token: str, public_keys: Mapping[str, ed25519.Ed25519PublicKey], now: datetime
) -> EnrollmentClaims:
    """Check format, signature (by key id in ``public_keys``) and time.

    Raises PkiError ``token_malformed``, ``token_forged`` (bad signature or unknown key) or
    ``token_expired`` (also for a token issued too far in the future). Single use is the
    controller's job.
    """
    now_ts = require_utc(now).timestamp()
    decoded, claims = _decode(token)
    key = public_keys.get(claims.key_id)
    if key is None:
        raise PkiError("token_forged", "the token's signing key is unknown")
    if not decoded.signature_valid(key):
        raise PkiError("token_forged", "the token signature is invalid")
    if claims.issued_at > now_ts + ISSUED_AT_SKEW.total_seconds():
        raise PkiError("token_expired", "the token is issued in the future (clock skew?)")
    if now_ts >= claims.expires_at:
        raise PkiError("token_expired", "the enrollment token has expired")
    return claims


def read_enrollment_token_unverified(token: str) -> EnrollmentClaims:
    """Parse (strictly) without checking the signature or time: only to learn where to enroll.

    Nothing read here may be trusted until the CA fingerprint has been pinned and the token
    verified or accepted by the controller. Raises PkiError ``token_malformed``.
    """
    return _decode(token)[1]


def _decode(token: str) -> tuple[DecodedToken, EnrollmentClaims]:
    try:
        decoded = decode_token(token, ENROLLMENT_PREFIX)
        return decoded, EnrollmentClaims.from_claims(decoded.claims)
    except TokenFormatError as exc:
        raise PkiError("token_malformed", exc.reason) from exc
