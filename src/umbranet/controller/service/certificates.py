"""Issuing certificates to identities and recording which one is current.

The store keeps the serial of an identity's current certificate and of the one before it:
requests authenticated with any other certificate of that identity (an old key after
re-enrollment) are refused, while the previous one stays valid so a renewal in flight does not
lock the client out.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from cryptography import x509

from umbranet.controller.service.authority import Authority
from umbranet.controller.service.errors import BadRequest
from umbranet.controller.store import Identity
from umbranet.pki import PkiError, load_csr
from umbranet.pki.tickets import certificate_key_fingerprint

__all__ = [
    "certificate_keys",
    "decode_noise_key",
    "issue_for_identity",
    "parse_csr",
    "serial_text",
]

_NOISE_KEY_LENGTH = 32


def serial_text(serial: int) -> str:
    """How serials are stored: lowercase hex, no prefix (fits a 64-char column)."""
    return format(serial, "x")


def parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    try:
        return load_csr(csr_pem)
    except PkiError as exc:
        raise BadRequest("csr_invalid", exc.reason) from exc


def decode_noise_key(text: str) -> bytes:
    """The standard-base64 X25519 public key from a request; exactly 32 bytes."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("noise_key_invalid", "noise_public_key is not valid base64") from exc
    if len(raw) != _NOISE_KEY_LENGTH:
        raise BadRequest("noise_key_invalid", "noise_public_key must be 32 bytes")
    return raw


def issue_for_identity(
    authority: Authority,
    identity: Identity,
    csr: x509.CertificateSigningRequest,
    noise_public_key: bytes,
    now: datetime,
    *,
    keep_previous: bool,
) -> x509.Certificate:
    """Issue an SVID for `identity` and make it current.

    `keep_previous` (renewal) keeps the outgoing certificate valid; a fresh enrollment does
    not, because it replaces the key material altogether.
    """
    try:
        cert = authority.ca.issue_svid(
            csr,
            identity.spiffe_id,
            noise_public_key,
            now,
            authority.lifetime_for(identity.kind),
        )
    except PkiError as exc:
        code = exc.code if exc.code in {"csr_invalid", "noise_key_invalid"} else "csr_invalid"
        raise BadRequest(code, exc.reason) from exc
    identity.previous_cert_serial = identity.cert_serial if keep_previous else None
    identity.cert_serial = serial_text(cert.serial_number)
    identity.previous_cert_key_fp = identity.cert_key_fp if keep_previous else None
    identity.cert_key_fp = certificate_key_fingerprint(cert)
    identity.cert_not_after = cert.not_valid_after_utc
    identity.noise_public_key = base64.b64encode(noise_public_key).decode("ascii")
    return cert


def certificate_keys(identity: Identity) -> list[str]:
    """Fingerprints of the identity's valid certificate keys (current first)."""
    return [fp for fp in (identity.cert_key_fp, identity.previous_cert_key_fp) if fp]
