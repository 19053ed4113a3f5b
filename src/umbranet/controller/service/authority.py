"""The controller's signing material and settings, handed to every use case that issues.

One immutable value built by `controller.home` at start-up (or by tests), so use cases stay
pure: they take a store, an `Authority` and `now`, and return rows, certificates and tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509

from umbranet.pki import CertificateAuthority, Signer, TrustBundle
from umbranet.pki.jwt_svid import JWT_SVID_LIFETIME, JwtAuthority

__all__ = [
    "ADMIN_SVID_LIFETIME",
    "ENROLLMENT_LIFETIME",
    "JWT_SVID_LIFETIME",
    "SVID_LIFETIME",
    "TICKET_LIFETIME",
    "Authority",
]

SVID_LIFETIME = timedelta(hours=24)
TICKET_LIFETIME = timedelta(minutes=10)
ENROLLMENT_LIFETIME = timedelta(hours=24)
ADMIN_SVID_LIFETIME = timedelta(days=30)
"""Admin certificates live longer: the management CLI renews them at half-life, but an admin
may not touch the CLI for a day, and an expired admin file locks them out of the API."""


@dataclass(frozen=True, slots=True)
class Authority:
    """CA, token signer, JWT-SVID key, the bundle peers trust, where the controller is."""

    ca: CertificateAuthority
    signer: Signer
    controller_url: str
    svid_lifetime: timedelta = SVID_LIFETIME
    admin_svid_lifetime: timedelta = ADMIN_SVID_LIFETIME
    ticket_lifetime: timedelta = TICKET_LIFETIME
    enrollment_lifetime: timedelta = ENROLLMENT_LIFETIME
    jwt_authority: JwtAuthority = field(default_factory=JwtAuthority.generate)
    """Signs JWT-SVIDs (ES256); a fresh one if the caller has none to load (tests)."""
    jwt_svid_lifetime: timedelta = JWT_SVID_LIFETIME
    retired_signers: tuple[Signer, ...] = ()
    """Ticket keys being rotated out: still trusted (in the bundle) until their overlap
    ends, and still used to sign bundle updates for holders that trust only them."""
    bundle_version: int = 0
    extra_cas: tuple[x509.Certificate, ...] = ()
    """CA certificates trusted besides `ca` (a CA rotation's next or previous one)."""
    bundle: TrustBundle = field(init=False)
    noise_pop_secret: bytes = field(init=False, repr=False)
    """Derives the keys of Noise proof-of-possession challenges (`pki.noise_pop`)."""

    def __post_init__(self) -> None:
        bundle = TrustBundle.from_certificates(
            self.ca.trust_domain,
            [self.ca.certificate, *self.extra_cas],
            [self.signer.public_key, *(s.public_key for s in self.retired_signers)],
            self.bundle_version,
        )
        object.__setattr__(self, "bundle", bundle)
        object.__setattr__(self, "noise_pop_secret", self.signer.derive_secret(b"noise-pop"))

    def bundle_updates(self, now: datetime) -> list[str]:
        """The current bundle signed by every ticket key we hold (`pki.bundle_update`), so
        a holder of any earlier bundle still in overlap can take it; empty before the first
        rotation."""
        if not self.bundle_version:
            return []
        return [
            s.sign_bundle_update(self.bundle, now) for s in (self.signer, *self.retired_signers)
        ]

    @property
    def trust_domain(self) -> str:
        return self.ca.trust_domain

    def lifetime_for(self, kind: str) -> timedelta:
        """Certificate lifetime for an identity of `kind`."""
        return self.admin_svid_lifetime if kind == "admin" else self.svid_lifetime
