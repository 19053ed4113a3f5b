"""Key material: TLS keys and CSRs, X25519 Noise static keys, Ed25519 key ids.

TLS keys are ECDSA P-256 (what every leaf certificate uses, see architecture.md); Ed25519 is
accepted when loading because the CA accepts Ed25519 CSRs too. The private key never leaves the
endpoint: the endpoint makes a CSR and only that travels to the controller.
"""

import hashlib
from typing import TypeAlias, TypeGuard

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import NameOID

from umbranet.pki.errors import PARSE_ERRORS, PkiError

__all__ = [
    "NOISE_KEY_LENGTH",
    "TlsPrivateKey",
    "TlsPublicKey",
    "generate_noise_keypair",
    "generate_tls_key",
    "is_supported_tls_public_key",
    "key_from_pem",
    "key_to_pem",
    "load_csr",
    "make_csr",
    "noise_public_key_from_private",
    "signing_key_id",
]

TlsPrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
TlsPublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

NOISE_KEY_LENGTH = 32


def generate_tls_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key for an X.509-SVID."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: TlsPrivateKey, common_name: str = "umbranet") -> x509.CertificateSigningRequest:
    """A CSR proving possession of ``key``; the CA ignores its subject and extensions."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return builder.sign(key, None)
    return builder.sign(key, hashes.SHA256())


def load_csr(data: bytes | str) -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR from a peer; raises PkiError ``csr_invalid``.

    Only parses; `CertificateAuthority.issue_svid` checks the signature and key type.
    """
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(raw)
        return x509.load_der_x509_csr(raw)
    except PARSE_ERRORS as exc:
        raise PkiError("csr_invalid", "the data is not a certificate signing request") from exc


def key_to_pem(key: TlsPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (files holding it are mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_pem(pem: bytes | str) -> TlsPrivateKey:
    """Load an unencrypted PEM TLS key (EC P-256 or Ed25519); raises PkiError ``key_invalid``."""
    raw = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except PARSE_ERRORS as exc:
        raise PkiError("key_invalid", "the data is not an unencrypted PEM private key") from exc
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise PkiError("key_invalid", "TLS keys must be ECDSA P-256 or Ed25519")


def is_supported_tls_public_key(key: object) -> TypeGuard[TlsPublicKey]:
    """True for the public key types a certificate may carry: EC P-256 or Ed25519."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return True
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def generate_noise_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 static key for the end-to-end Noise handshake: (private, public), raw."""
    private = x25519.X25519PrivateKey.generate()
    return (
        private.private_bytes_raw(),
        private.public_key().public_bytes_raw(),
    )


def noise_public_key_from_private(private_key: bytes) -> bytes:
    """The raw X25519 public key of a raw 32-byte private key."""
    if not isinstance(private_key, bytes) or len(private_key) != NOISE_KEY_LENGTH:
        raise PkiError("key_invalid", "a Noise private key is 32 raw bytes")
    return x25519.X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def signing_key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """Key id of a token-signing key: the first 16 hex chars of SHA-256 of the raw key."""
    return hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]
