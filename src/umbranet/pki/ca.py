"""The network's certificate authority: issues X.509-SVIDs to identities.

One self-signed ECDSA P-256 root per trust domain (10 years), no intermediates (path length 0).
Each leaf is an X.509-SVID as the SPIFFE spec and architecture.md define it; the CA trusts
nothing in a CSR but its public key and proof of possession, so a client cannot smuggle in a
name, a CA flag or an extra SAN. The endpoint's X25519 Noise key is bound into the leaf by the
``umbranet noise static key`` extension (`NOISE_KEY_OID`).
"""

import ipaddress
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from umbranet.pki.errors import PARSE_ERRORS, PkiError, PkiUsageError, require_utc
from umbranet.pki.keys import (
    NOISE_KEY_LENGTH,
    TlsPublicKey,
    is_supported_tls_public_key,
    key_to_pem,
)
from umbranet.pki.spiffe_id import SpiffeId, validate_trust_domain

__all__ = [
    "CA_LIFETIME",
    "CLOCK_SKEW",
    "NOISE_KEY_OID",
    "SVID_LIFETIME",
    "CertificateAuthority",
    "IpAddressLike",
    "encode_noise_key_extension",
]

NOISE_KEY_OID = x509.ObjectIdentifier("1.3.6.1.4.1.59581.1.1")
"""Extension binding an endpoint's X25519 static key to its SVID (value: DER OCTET STRING)."""

CA_LIFETIME = timedelta(days=3650)
SVID_LIFETIME = timedelta(hours=24)
CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this long before ``now`` so a peer whose clock lags still accepts them."""

_ORGANIZATION = "umbranet"
_SERIAL_BITS = 159  # RFC 5280 allows 20 octets; 159 bits keeps the DER integer positive.

IpAddressLike = str | ipaddress.IPv4Address | ipaddress.IPv6Address


class CertificateAuthority:
    """A CA private key with its self-signed certificate; issues SVIDs for one trust domain."""

    __slots__ = ("_certificate", "_key", "_ski", "_trust_domain")

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate):
        """Wrap an existing CA; prefer `create` or `from_pem`. Raises PkiError ``ca_invalid``."""
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise PkiError("ca_invalid", "the CA key must be ECDSA P-256")
        if certificate.public_key() != private_key.public_key():
            raise PkiError("ca_invalid", "the CA key does not match the CA certificate")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound as exc:
            raise PkiError("ca_invalid", "the CA certificate lacks a required extension") from exc
        except PARSE_ERRORS as exc:
            raise PkiError("ca_invalid", "the CA certificate cannot be parsed") from exc
        if not constraints.value.ca:
            raise PkiError("ca_invalid", "the CA certificate is not a CA")
        uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            raise PkiError("ca_invalid", "the CA certificate must have one URI SAN")
        try:
            ca_id = SpiffeId.parse(uris[0])
        except PkiError as exc:
            raise PkiError("ca_invalid", f"the CA URI SAN is invalid: {exc.reason}") from exc
        if ca_id.path:
            raise PkiError("ca_invalid", "the CA URI SAN must be the bare trust domain ID")
        self._key = private_key
        self._certificate = certificate
        self._ski = ski.value
        self._trust_domain = ca_id.trust_domain

    @classmethod
    def create(
        cls, trust_domain: str, now: datetime, lifetime: timedelta = CA_LIFETIME
    ) -> "CertificateAuthority":
        """A new self-signed CA for ``trust_domain`` valid from ``now`` for ``lifetime``."""
        now = require_utc(now)
        validate_trust_domain(trust_domain)
        _require_positive(lifetime)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, f"umbranet CA {trust_domain}"),
            ]
        )
        public_key = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(_random_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(digital_signature=False, cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes) -> "CertificateAuthority":
        """Load a CA written by `to_pem`; raises PkiError ``ca_invalid``."""
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except PARSE_ERRORS as exc:
            raise PkiError("ca_invalid", "cannot parse the CA key or certificate") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("ca_invalid", "the CA key must be ECDSA P-256")
        return cls(key, certificate)

    def to_pem(self) -> tuple[bytes, bytes]:
        """(key PEM, unencrypted PKCS#8; certificate PEM)."""
        return key_to_pem(self._key), self._certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    def issue_svid(  # noqa: PLR0917 - positional order is the documented contract
        self,
        csr: x509.CertificateSigningRequest,
        spiffe_id: SpiffeId | str,
        noise_public_key: bytes | None,
        now: datetime,
        lifetime: timedelta = SVID_LIFETIME,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[IpAddressLike] = (),
    ) -> x509.Certificate:
        """Issue an X.509-SVID for the key in ``csr``.

        Raises PkiError ``csr_invalid`` if the CSR's signature is bad or its key is not
        EC P-256/Ed25519, ``noise_key_invalid`` if the Noise key is not 32 bytes.
        Everything else in the CSR (subject, requested extensions) is ignored.
        """
        try:
            signature_ok = csr.is_signature_valid
            public_key = csr.public_key()
        except PARSE_ERRORS as exc:
            raise PkiError("csr_invalid", "the CSR cannot be read") from exc
        if not signature_ok:
            raise PkiError("csr_invalid", "the CSR signature is invalid")
        if not is_supported_tls_public_key(public_key):
            raise PkiError("csr_invalid", "the CSR key must be ECDSA P-256 or Ed25519")
        return self.issue_svid_for_public_key(
            public_key,
            spiffe_id,
            noise_public_key,
            now,
            lifetime=lifetime,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )

    def issue_svid_for_public_key(  # noqa: PLR0917 - mirrors issue_svid
        self,
        public_key: TlsPublicKey,
        spiffe_id: SpiffeId | str,
        noise_public_key: bytes | None,
        now: datetime,
        lifetime: timedelta = SVID_LIFETIME,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[IpAddressLike] = (),
    ) -> x509.Certificate:
        """Issue an X.509-SVID for a key we hold ourselves (e.g. the controller's server key)."""
        now = require_utc(now)
        _require_positive(lifetime)
        if not is_supported_tls_public_key(public_key):
            raise PkiUsageError("the public key must be ECDSA P-256 or Ed25519")
        subject_id = SpiffeId.parse(spiffe_id) if isinstance(spiffe_id, str) else spiffe_id
        if subject_id.trust_domain != self._trust_domain:
            raise PkiUsageError(
                f"{subject_id} is not in this CA's trust domain {self._trust_domain}"
            )
        if not subject_id.path:
            raise PkiUsageError("an SVID needs a SPIFFE ID with a path")
        ca_not_after = self._certificate.not_valid_after_utc
        if now >= ca_not_after:
            raise PkiError("cert_expired", "the CA certificate has expired")
        not_after = min(now + lifetime, ca_not_after)

        alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(subject_id))]
        alt_names += [x509.DNSName(name) for name in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]

        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                        x509.NameAttribute(NameOID.COMMON_NAME, subject_id.segments[-1]),
                    ]
                )
            )
            .issuer_name(self._certificate.subject)
            .public_key(public_key)
            .serial_number(_random_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if noise_public_key is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(
                    NOISE_KEY_OID, encode_noise_key_extension(noise_public_key)
                ),
                critical=False,
            )
        return builder.sign(self._key, hashes.SHA256())


def encode_noise_key_extension(noise_public_key: bytes) -> bytes:
    """The extension value: DER OCTET STRING (tag 0x04, length 0x20) of the raw X25519 key."""
    if not isinstance(noise_public_key, bytes) or len(noise_public_key) != NOISE_KEY_LENGTH:
        raise PkiError("noise_key_invalid", "a Noise public key is 32 raw bytes")
    return b"\x04\x20" + noise_public_key


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _random_serial() -> int:
    return secrets.randbits(_SERIAL_BITS) or 1


def _require_positive(lifetime: timedelta) -> None:
    if not isinstance(lifetime, timedelta) or lifetime <= timedelta(0):
        raise PkiUsageError("lifetime must be a positive timedelta")
