"""The controller's signing material and settings, handed to every use case that issues.

One immutable value built by `controller.home` at start-up (or by tests), so use cases stay
pure: they take a store, an `Authority` and `now`, and return rows, certificates and tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from umbranet.pki import CertificateAuthority, Signer, TrustBundle

__all__ = [
    "ENROLLMENT_LIFETIME",
    "SVID_LIFETIME",
    "TICKET_LIFETIME",
    "Authority",
]

SVID_LIFETIME = timedelta(hours=24)
TICKET_LIFETIME = timedelta(minutes=10)
ENROLLMENT_LIFETIME = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Authority:
    """CA, token signer, the bundle peers trust, and where the controller is reached."""

    ca: CertificateAuthority
    signer: Signer
    controller_url: str
    svid_lifetime: timedelta = SVID_LIFETIME
    ticket_lifetime: timedelta = TICKET_LIFETIME
    enrollment_lifetime: timedelta = ENROLLMENT_LIFETIME
    bundle: TrustBundle = field(init=False)

    def __post_init__(self) -> None:
        bundle = TrustBundle.from_certificates(
            self.ca.trust_domain, [self.ca.certificate], [self.signer.public_key]
        )
        object.__setattr__(self, "bundle", bundle)

    @property
    def trust_domain(self) -> str:
        return self.ca.trust_domain
