"""The controller's token signer: one Ed25519 key that signs session tickets and enrollment
tokens. Its public half travels in the trust bundle (``ticket_keys``) under its key id."""

import hashlib
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from umbranet.pki.bundle import TrustBundle
from umbranet.pki.bundle_update import BUNDLE_UPDATE_PREFIX
from umbranet.pki.enrollment import ENROLLMENT_LIFETIME, ENROLLMENT_PREFIX, EnrollmentClaims
from umbranet.pki.errors import PARSE_ERRORS, PkiError, PkiUsageError, require_utc
from umbranet.pki.keys import key_to_pem, signing_key_id
from umbranet.pki.spiffe_id import SpiffeId
from umbranet.pki.tickets import TICKET_LIFETIME, TICKET_PREFIX, Action, Ticket
from umbranet.pki.tokens import TokenFormatError, encode_token

__all__ = ["Signer"]


class Signer:
    """Signs tickets and enrollment tokens with an Ed25519 private key."""

    __slots__ = ("_key", "_key_id", "_public_key")

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        if not isinstance(private_key, ed25519.Ed25519PrivateKey):
            raise PkiUsageError("a Signer needs an Ed25519 private key")
        self._key = private_key
        self._public_key = private_key.public_key()
        self._key_id = signing_key_id(self._public_key)

    @classmethod
    def generate(cls) -> "Signer":
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> "Signer":
        """Load an unencrypted PKCS#8 PEM Ed25519 key; raises PkiError ``key_invalid``."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except PARSE_ERRORS as exc:
            raise PkiError("key_invalid", "cannot parse the signing key") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise PkiError("key_invalid", "the signing key must be Ed25519")
        return cls(key)

    def to_pem(self) -> bytes:
        return key_to_pem(self._key)

    @property
    def key_id(self) -> str:
        """First 16 hex chars of SHA-256 of the raw public key."""
        return self._key_id

    @property
    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._public_key

    def derive_secret(self, label: bytes) -> bytes:
        """A 32-byte secret bound to this signing key and `label`, stable across restarts
        (Ed25519 signatures are deterministic), so derived keys need no storage of their own.
        Never use the same label for two purposes."""
        return hashlib.sha256(
            b"umbra-derive-v1" + self._key.sign(b"umbra-derive:" + label)
        ).digest()

    def sign_bundle_update(self, bundle: TrustBundle, now: datetime) -> str:
        """Sign `bundle` (with its version) for holders that trust this key already."""
        claims = {
            "ver": bundle.version,
            "iat": int(require_utc(now).timestamp()),
            "kid": self._key_id,
            "bundle": bundle.to_dict(),
        }
        return encode_token(BUNDLE_UPDATE_PREFIX, claims, self._key)

    def sign_ticket(  # noqa: PLR0917 - positional order is the documented contract
        self,
        spiffe_id: SpiffeId | str,
        service: str,
        action: Action,
        now: datetime,
        lifetime: timedelta = TICKET_LIFETIME,
        ticket_id: str | None = None,
        attributes: Sequence[str] = (),
        epoch: int = 0,
        port: int | None = None,
        key_binding: Sequence[str] = (),
    ) -> tuple[Ticket, str]:
        """Sign a session ticket; returns the ticket and its token string."""
        issued_at, expires_at = _times(now, lifetime)
        ticket = Ticket(
            id=ticket_id if ticket_id is not None else secrets.token_urlsafe(16),
            spiffe_id=str(spiffe_id),
            service=service,
            action=Action(action),
            issued_at=issued_at,
            expires_at=expires_at,
            key_id=self._key_id,
            attributes=tuple(attributes),
            epoch=epoch,
            port=port,
            key_binding=tuple(key_binding),
        )
        _check_signable(Ticket.from_claims, ticket.to_claims())
        return ticket, encode_token(TICKET_PREFIX, ticket.to_claims(), self._key)

    def sign_enrollment_token(
        self,
        spiffe_id: SpiffeId | str,
        controller_url: str,
        ca_fingerprint: str,
        now: datetime,
        lifetime: timedelta = ENROLLMENT_LIFETIME,
    ) -> tuple[EnrollmentClaims, str]:
        """Sign an enrollment token; returns its claims and the token string."""
        issued_at, expires_at = _times(now, lifetime)
        claims = EnrollmentClaims(
            token_id=secrets.token_urlsafe(16),
            spiffe_id=str(spiffe_id),
            controller_url=controller_url,
            ca_fingerprint=ca_fingerprint,
            issued_at=issued_at,
            expires_at=expires_at,
            key_id=self._key_id,
        )
        _check_signable(EnrollmentClaims.from_claims, claims.to_claims())
        return claims, encode_token(ENROLLMENT_PREFIX, claims.to_claims(), self._key)


def _check_signable(validate: Callable[[dict[str, Any]], object], claims: dict[str, Any]) -> None:
    """Run the verifier's validator first, so we never sign what verifiers would refuse."""
    try:
        validate(claims)
    except TokenFormatError as exc:
        raise PkiUsageError(f"refusing to sign invalid claims: {exc.reason}") from exc


def _times(now: datetime, lifetime: timedelta) -> tuple[int, int]:
    if not isinstance(lifetime, timedelta) or lifetime < timedelta(seconds=1):
        raise PkiUsageError("lifetime must be at least one second")
    issued_at = int(require_utc(now).timestamp())
    return issued_at, issued_at + int(lifetime.total_seconds())
