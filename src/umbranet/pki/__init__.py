"""Umbranet's PKI: SPIFFE identities, the CA and X.509-SVIDs, trust bundles, signed tokens.

Pure code: no sockets, no clock reads (every check takes ``now``, a timezone-aware UTC
``datetime``), no file IO except `IdentityFile.save`/`IdentityFile.load`. Bad input from a peer
raises `PkiError` with a stable ``code``; misuse of the API raises `PkiUsageError`.
The contracts are in ``docs/architecture.md`` ("Names and identities", "umbranet.pki").
"""

from umbranet.pki import keys
from umbranet.pki.bundle import TrustBundle
from umbranet.pki.ca import (
    CA_LIFETIME,
    CLOCK_SKEW,
    NOISE_KEY_OID,
    SVID_LIFETIME,
    CertificateAuthority,
)
from umbranet.pki.enrollment import (
    ENROLLMENT_LIFETIME,
    ENROLLMENT_PREFIX,
    EnrollmentClaims,
    read_enrollment_token_unverified,
    verify_enrollment_token,
)
from umbranet.pki.errors import CODES, PkiError, PkiUsageError
from umbranet.pki.identity_file import IdentityFile
from umbranet.pki.keys import (
    TlsPrivateKey,
    TlsPublicKey,
    generate_noise_keypair,
    generate_tls_key,
    key_from_pem,
    key_to_pem,
    load_csr,
    make_csr,
    noise_public_key_from_private,
    signing_key_id,
)
from umbranet.pki.signer import Signer
from umbranet.pki.spiffe_id import KINDS, SpiffeId, is_valid_name, validate_trust_domain
from umbranet.pki.svid import (
    VerifiedPeer,
    load_chain,
    noise_public_key_of,
    spiffe_id_of,
    verify_svid,
)
from umbranet.pki.tickets import TICKET_LIFETIME, TICKET_PREFIX, Action, Ticket, verify_ticket

__all__ = [
    "CA_LIFETIME",
    "CLOCK_SKEW",
    "CODES",
    "ENROLLMENT_LIFETIME",
    "ENROLLMENT_PREFIX",
    "KINDS",
    "NOISE_KEY_OID",
    "SVID_LIFETIME",
    "TICKET_LIFETIME",
    "TICKET_PREFIX",
    "Action",
    "CertificateAuthority",
    "EnrollmentClaims",
    "IdentityFile",
    "PkiError",
    "PkiUsageError",
    "Signer",
    "SpiffeId",
    "Ticket",
    "TlsPrivateKey",
    "TlsPublicKey",
    "TrustBundle",
    "VerifiedPeer",
    "generate_noise_keypair",
    "generate_tls_key",
    "is_valid_name",
    "key_from_pem",
    "key_to_pem",
    "keys",
    "load_chain",
    "load_csr",
    "make_csr",
    "noise_public_key_from_private",
    "noise_public_key_of",
    "read_enrollment_token_unverified",
    "signing_key_id",
    "spiffe_id_of",
    "validate_trust_domain",
    "verify_enrollment_token",
    "verify_svid",
    "verify_ticket",
]
