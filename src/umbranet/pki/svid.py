"""Verifying a peer's X.509-SVID against the trust bundle, offline and without a clock read.

TLS (in ``umbranet.aio``) proves the peer holds the leaf's key; this module decides what the
leaf *means*: which SPIFFE ID and which Noise key the network's CA vouched for, at ``now``. The
checks follow the X.509-SVID spec: the leaf is signed directly by a bundle CA, is inside its
validity window, is not a CA, has KeyUsage digitalSignature, exactly one URI SAN that is a
SPIFFE ID in the bundle's trust domain, and no critical extension we do not understand.

Error codes: ``cert_untrusted`` (no bundle CA signed it), ``cert_expired`` /
``cert_not_yet_valid`` (leaf or issuing CA outside its window), ``not_svid`` (structure),
``wrong_trust_domain`` (a valid SVID of another network).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID

from umbranet.pki.bundle import TrustBundle
from umbranet.pki.ca import NOISE_KEY_OID
from umbranet.pki.errors import PARSE_ERRORS, PkiError, require_utc
from umbranet.pki.keys import NOISE_KEY_LENGTH
from umbranet.pki.spiffe_id import SpiffeId

__all__ = [
    "VerifiedPeer",
    "load_chain",
    "noise_public_key_of",
    "spiffe_id_of",
    "verify_svid",
]

_KNOWN_CRITICAL = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.EXTENDED_KEY_USAGE,
    }
)
_NOISE_EXTENSION_PREFIX = b"\x04\x20"  # DER OCTET STRING, 32 bytes
_MAX_CHAIN_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class VerifiedPeer:
    """What a verified SVID vouches for."""

    spiffe_id: SpiffeId
    noise_public_key: bytes | None
    not_before: datetime
    not_after: datetime
    serial: int


def verify_svid(
    chain: Sequence[x509.Certificate], bundle: TrustBundle, now: datetime
) -> VerifiedPeer:
    """Verify the leaf ``chain[0]`` against ``bundle`` at ``now``; raises PkiError.

    Further certificates in ``chain`` are ignored: Umbranet CAs issue leaves directly
    (path length 0), so an intermediate could only be an attempt to extend trust.
    """
    now = require_utc(now)
    if not chain:
        raise PkiError("cert_untrusted", "the peer presented no certificate")
    leaf = chain[0]
    try:
        issuer = _find_issuer(leaf, bundle)
        _check_window(issuer, now, "the issuing CA certificate")
        _check_window(leaf, now, "the certificate")
        _check_leaf_extensions(leaf)
        spiffe_id = spiffe_id_of(leaf)
        noise_key = noise_public_key_of(leaf)
    except PARSE_ERRORS as exc:
        # cryptography parses extensions lazily; malformed DER surfaces here.
        raise PkiError("not_svid", "the certificate cannot be parsed") from exc
    if spiffe_id.trust_domain != bundle.trust_domain:
        raise PkiError(
            "wrong_trust_domain",
            f"the SVID is for trust domain {spiffe_id.trust_domain!r}, "
            f"expected {bundle.trust_domain!r}",
        )
    if not spiffe_id.path:
        raise PkiError("not_svid", "a leaf SVID's SPIFFE ID must have a path")
    return VerifiedPeer(
        spiffe_id=spiffe_id,
        noise_public_key=noise_key,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        serial=leaf.serial_number,
    )


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID in ``cert``'s single URI SAN (no trust checks); raises PkiError not_svid."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound as exc:
        raise PkiError("not_svid", "the certificate has no subject alternative names") from exc
    except PARSE_ERRORS as exc:
        raise PkiError("not_svid", "the certificate's extensions cannot be parsed") from exc
    if len(uris) != 1:
        raise PkiError("not_svid", f"an SVID has exactly one URI SAN, this has {len(uris)}")
    try:
        return SpiffeId.parse(uris[0])
    except PkiError as exc:
        raise PkiError("not_svid", f"the URI SAN is not a SPIFFE ID: {exc.reason}") from exc


def noise_public_key_of(cert: x509.Certificate) -> bytes | None:
    """The X25519 key bound by the noise extension, None if absent; raises PkiError not_svid."""
    try:
        extension = cert.extensions.get_extension_for_oid(NOISE_KEY_OID)
    except x509.ExtensionNotFound:
        return None
    except PARSE_ERRORS as exc:
        raise PkiError("not_svid", "the certificate's extensions cannot be parsed") from exc
    value = extension.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if len(raw) != len(_NOISE_EXTENSION_PREFIX) + NOISE_KEY_LENGTH or not raw.startswith(
        _NOISE_EXTENSION_PREFIX
    ):
        raise PkiError("not_svid", "the noise key extension is not a 32-byte OCTET STRING")
    return raw[len(_NOISE_EXTENSION_PREFIX) :]


def load_chain(pem_or_der: bytes | str) -> list[x509.Certificate]:
    """Parse PEM (one or more certificates, leaf first) or a single DER certificate.

    Raises PkiError ``not_svid`` if the data holds no certificate.
    """
    raw = pem_or_der.encode("ascii", "replace") if isinstance(pem_or_der, str) else pem_or_der
    if len(raw) > _MAX_CHAIN_BYTES:
        raise PkiError("not_svid", "the certificate chain is too large")
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificates(raw)
        return [x509.load_der_x509_certificate(raw)]
    except PARSE_ERRORS as exc:
        raise PkiError("not_svid", "the data is not an X.509 certificate") from exc


def _find_issuer(leaf: x509.Certificate, bundle: TrustBundle) -> x509.Certificate:
    """The bundle CA that signed `leaf`. A verified (leaf, CA) pair is remembered: peers
    present the same certificate on every dial, and the signature check is ~65 us."""
    key = (leaf.tbs_certificate_bytes, leaf.signature, bundle.ca_pem)
    cached = _ISSUERS.get(key)
    if cached is not None:
        return cached
    ca = _verify_issuer(leaf, bundle)
    if len(_ISSUERS) >= 4096:
        _ISSUERS.clear()
    _ISSUERS[key] = ca
    return ca


_ISSUERS: dict[tuple[bytes, bytes, str], x509.Certificate] = {}


def _verify_issuer(leaf: x509.Certificate, bundle: TrustBundle) -> x509.Certificate:
    for ca in bundle.ca_certificates:
        try:
            leaf.verify_directly_issued_by(ca)
        except InvalidSignature:
            continue
        except PARSE_ERRORS:
            continue
        return ca
    raise PkiError("cert_untrusted", "the certificate is not signed by a CA in the trust bundle")


def _check_window(cert: x509.Certificate, now: datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise PkiError("cert_not_yet_valid", f"{what} is not valid yet")
    if now > cert.not_valid_after_utc:
        raise PkiError("cert_expired", f"{what} has expired")


def _check_leaf_extensions(leaf: x509.Certificate) -> None:
    extensions = leaf.extensions
    for extension in extensions:
        if extension.critical and extension.oid not in _KNOWN_CRITICAL:
            raise PkiError("not_svid", f"unknown critical extension {extension.oid.dotted_string}")
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise PkiError("not_svid", "an SVID needs BasicConstraints and KeyUsage") from exc
    if constraints.ca:
        raise PkiError("not_svid", "a CA certificate is not a leaf SVID")
    if not usage.digital_signature or usage.key_cert_sign or usage.crl_sign:
        raise PkiError("not_svid", "an SVID's KeyUsage must be digitalSignature only")
