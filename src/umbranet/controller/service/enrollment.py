"""Enrollment and renewal: a token or a live certificate, plus a CSR, becomes an X.509-SVID.

The private TLS key and the Noise private key never reach the controller; it sees a CSR and
the Noise public key, binds both to the identity's SPIFFE ID and stores what it issued.
"""

from __future__ import annotations

import base64
from datetime import datetime

from cryptography import x509

from umbranet.controller.service.authority import Authority
from umbranet.controller.service.certificates import (
    decode_noise_key,
    issue_for_identity,
    parse_csr,
)
from umbranet.controller.service.errors import BadRequest, Conflict, Forbidden, Unauthenticated
from umbranet.controller.service.tokens import check_enrollment_token
from umbranet.controller.store import Identity, Store
from umbranet.pki import PkiError
from umbranet.pki.noise_pop import csr_binding, verify_noise_proof

__all__ = ["enroll", "renew"]


def enroll(
    store: Store,
    authority: Authority,
    *,
    token: str,
    csr_pem: str,
    noise_public_key: str,
    noise_challenge: str,
    noise_proof: str,
    now: datetime,
) -> tuple[Identity, x509.Certificate]:
    """Exchange a one-time token and a CSR for the identity's certificate.

    Checks, in order: token (``token_invalid``, ``token_expired``, ``token_used``,
    ``token_retired``), identity
    enabled (``identity_disabled``), Noise key (``noise_key_invalid``), CSR (``csr_invalid``),
    possession of the Noise key (``noise_proof_invalid``), and that no other identity has
    registered it (``noise_key_in_use``: peers find each other's identity by that key).
    The token is consumed in the same transaction as the certificate is recorded, so a
    rejected CSR leaves the token usable and two racing enrollments cannot both succeed.
    """
    _claims, enrollment = check_enrollment_token(store, authority, token, now)
    identity = enrollment.identity
    if not identity.enabled:
        raise Forbidden("identity_disabled", f"identity {identity.name!r} is disabled")
    noise_key = decode_noise_key(noise_public_key)
    csr = parse_csr(csr_pem)
    _check_possession(
        authority, noise_key, csr, challenge=noise_challenge, proof=noise_proof, now=now
    )
    holder = store.identity_by_noise_key(noise_public_key_text(noise_key))
    if holder is not None and holder.id != identity.id:
        raise Conflict("noise_key_in_use", "this Noise key is registered to another identity")
    cert = issue_for_identity(authority, identity, csr, noise_key, now, keep_previous=False)
    if not store.consume_enrollment(enrollment.token_id, now):
        raise Conflict("token_used", "this enrollment token has already been used")
    # Any other token still out there would replace this key behind the owner's back.
    store.retire_enrollments(identity.id, now, keep=enrollment.token_id)
    store.audit(now, identity.spiffe_id, "identity.enrolled", identity.name, {})
    return identity, cert


def renew(
    store: Store,
    authority: Authority,
    identity: Identity,
    *,
    csr_pem: str,
    noise_challenge: str,
    noise_proof: str,
    now: datetime,
) -> x509.Certificate:
    """A fresh certificate for an authenticated identity, with the Noise key it enrolled with.

    The caller proves it still holds that Noise key (``noise_proof_invalid``): a stolen TLS
    key alone does not renew. The outgoing certificate stays valid (as the previous one)
    until it expires.
    """
    if not identity.enabled:
        raise Forbidden("identity_disabled", f"identity {identity.name!r} is disabled")
    if identity.noise_public_key is None:
        raise BadRequest("not_enrolled", f"identity {identity.name!r} has never enrolled")
    noise_key = base64.b64decode(identity.noise_public_key)
    csr = parse_csr(csr_pem)
    _check_possession(
        authority, noise_key, csr, challenge=noise_challenge, proof=noise_proof, now=now
    )
    return issue_for_identity(authority, identity, csr, noise_key, now, keep_previous=True)


def noise_public_key_text(key: bytes) -> str:
    """How Noise keys are stored: standard base64."""
    return base64.b64encode(key).decode("ascii")


def _check_possession(
    authority: Authority,
    noise_key: bytes,
    csr: x509.CertificateSigningRequest,
    *,
    challenge: str,
    proof: str,
    now: datetime,
) -> None:
    try:
        verify_noise_proof(
            authority.noise_pop_secret,
            noise_key,
            csr_binding(csr),
            challenge=challenge,
            proof=proof,
            now=now,
        )
    except PkiError as exc:
        raise Unauthenticated("noise_proof_invalid", exc.reason) from exc
