"""Key material: TLS keys and CSRs, X25519 Noise static keys, Ed25519 key ids, keys at rest.

TLS keys are ECDSA P-256 (what every leaf certificate uses, see architecture.md); Ed25519 is
accepted when loading because the CA accepts Ed25519 CSRs too. The private key never leaves the
endpoint: the endpoint makes a CSR and only that travels to the controller.

Keys at rest (the controller's CA, ticket-signing and JWT keys): files are mode 0600, and a
file found readable by others is tightened to 0600 when it is loaded. With a passphrase
(``UMBRA_KEY_PASSPHRASE``, or the first line of the file named by
``UMBRA_KEY_PASSPHRASE_FILE``) they are written encrypted (PKCS#8 with the best encryption the
`cryptography` build offers) and decrypted only in memory; `seal_key_pem`/`open_key_pem` are
the two directions and leave the key types to the loaders.
"""

import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
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
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_ENV",
    "PRIVATE_KEY_MODE",
    "is_supported_tls_public_key",
    "key_from_pem",
    "key_passphrase",
    "key_to_pem",
    "load_csr",
    "make_csr",
    "noise_public_key_from_private",
    "open_key_pem",
    "read_private_key",
    "seal_key_pem",
    "signing_key_id",
    "write_private_key",
]

PASSPHRASE_ENV = "UMBRA_KEY_PASSPHRASE"
PASSPHRASE_FILE_ENV = "UMBRA_KEY_PASSPHRASE_FILE"
PRIVATE_KEY_MODE = 0o600

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


# -- keys at rest --------------------------------------------------------------------------


def key_passphrase(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The passphrase for keys at rest, if one is configured; PkiError if it cannot be read."""
    text = environ.get(PASSPHRASE_ENV)
    if text is None and environ.get(PASSPHRASE_FILE_ENV):
        path = environ[PASSPHRASE_FILE_ENV]
        try:
            text = Path(path).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise PkiError(
                "key_passphrase_unreadable", f"{PASSPHRASE_FILE_ENV}={path} cannot be read"
            ) from exc
    if text is None:
        return None
    if not text:
        raise PkiError("key_passphrase_unreadable", "the key passphrase is empty")
    return text.encode("utf-8")


def seal_key_pem(pem: bytes, passphrase: bytes | None) -> bytes:
    """`pem` (an unencrypted PKCS#8 key) as it should be stored: encrypted if a passphrase."""
    if passphrase is None:
        return pem
    key = serialization.load_pem_private_key(pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def open_key_pem(pem: bytes, passphrase: bytes | None) -> bytes:
    """A stored key as unencrypted PKCS#8 PEM, in memory only; PkiError if it cannot be."""
    if b"ENCRYPTED" not in pem.split(b"\n", 1)[0]:
        return pem  # stored before encryption was configured: still loads
    if passphrase is None:
        raise PkiError(
            "key_encrypted",
            f"the key is encrypted; set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV}",
        )
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except PARSE_ERRORS as exc:
        raise PkiError("key_passphrase_wrong", "the key passphrase does not open the key") from exc
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private_key(path: Path, pem: bytes, passphrase: bytes | None) -> None:
    """Create `path` exclusively at 0600 (never overwriting) holding the sealed key."""
    data = seal_key_pem(pem, passphrase)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_KEY_MODE)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), PRIVATE_KEY_MODE)  # whatever the umask said
        handle.write(data)


def read_private_key(path: Path, passphrase: bytes | None) -> bytes:
    """The key stored at `path`, opened; a file others may read is tightened to 0600 first."""
    with open(path, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & 0o077:
            os.fchmod(handle.fileno(), PRIVATE_KEY_MODE)
        data = handle.read()
    return open_key_pem(data, passphrase)
