"""The trust bundle: everything a party needs to check credentials offline.

It holds the network's CA certificates (to verify X.509-SVIDs) and the controller's ticket
signing keys (to verify session tickets), so routers and endpoints keep authorizing existing
grants while the controller is down. JSON form, as served at ``GET /v1/bundle``::

    {"trust_domain": "demo.umbra", "ca_pem": "-----BEGIN CERTIFICATE-----...",
     "ticket_keys": {"<kid>": "<base64 of the raw 32-byte Ed25519 key>"}}

Rotation adds a key or CA certificate beside the old one; the first CA certificate is the
current one (its fingerprint is what enrollment tokens pin). A bundle may carry a
``"version"`` (a positive integer, absent means 0): each rotation publishes a higher one,
signed (`pki.bundle_update`), and holders accept only newer versions.
"""

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from umbranet.pki.errors import PARSE_ERRORS, PkiError
from umbranet.pki.keys import signing_key_id
from umbranet.pki.spiffe_id import validate_trust_domain

__all__ = ["TrustBundle", "certificate_fingerprint"]

_MAX_BUNDLE_JSON = 1 << 20


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """CA certificates (PEM, current first) and ticket keys by key id, for one trust domain.

    Construction validates: ``ca_pem`` holds at least one CA certificate and every key id is
    the id of its key. Raises PkiError ``bundle_invalid``.
    """

    trust_domain: str
    ca_pem: str
    ticket_keys: dict[str, ed25519.Ed25519PublicKey] = field(default_factory=dict)
    version: int = 0
    ca_certificates: tuple[x509.Certificate, ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        try:
            validate_trust_domain(self.trust_domain)
        except PkiError as exc:
            raise PkiError("bundle_invalid", exc.reason) from exc
        if not isinstance(self.ca_pem, str):
            raise PkiError("bundle_invalid", "ca_pem must be a PEM string")
        certificates = _load_ca_certificates(self.ca_pem)
        object.__setattr__(self, "ca_certificates", certificates)
        if type(self.version) is not int or not 0 <= self.version < 1 << 53:
            raise PkiError("bundle_invalid", "version must be a non-negative integer")
        if not isinstance(self.ticket_keys, dict):
            raise PkiError("bundle_invalid", "ticket_keys must be a dict")
        for key_id, key in self.ticket_keys.items():
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise PkiError("bundle_invalid", f"ticket key {key_id!r} is not an Ed25519 key")
            if key_id != signing_key_id(key):
                raise PkiError("bundle_invalid", f"ticket key id {key_id!r} does not match its key")

    @classmethod
    def from_certificates(
        cls,
        trust_domain: str,
        ca_certificates: Sequence[x509.Certificate],
        ticket_keys: Sequence[ed25519.Ed25519PublicKey] = (),
        version: int = 0,
    ) -> "TrustBundle":
        """Build a bundle from certificate objects (current CA first) and public keys."""
        pem = "".join(
            cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
            for cert in ca_certificates
        )
        keys = {signing_key_id(key): key for key in ticket_keys}
        return cls(trust_domain, pem, keys, version)

    def ca_fingerprint(self) -> str:
        """SHA-256 hex of the current (first) CA certificate's DER: what enrollees pin."""
        return certificate_fingerprint(self.ca_certificates[0])

    def ca_with_fingerprint(self, fingerprint: str) -> x509.Certificate | None:
        """The one CA certificate whose SHA-256 fingerprint is `fingerprint`, if any.

        Enrollment trusts exactly this certificate, never the rest of a bundle that reached
        it over an unauthenticated connection (an on-path attacker can append its own CA).
        """
        for cert in self.ca_certificates:
            if hmac.compare_digest(certificate_fingerprint(cert), fingerprint.lower()):
                return cert
        return None

    def with_ticket_key(self, public_key: ed25519.Ed25519PublicKey) -> "TrustBundle":
        """A copy that also trusts ``public_key`` for tickets (key rotation)."""
        keys = dict(self.ticket_keys)
        keys[signing_key_id(public_key)] = public_key
        return TrustBundle(self.trust_domain, self.ca_pem, keys, self.version)

    def without_ticket_key(self, key_id: str) -> "TrustBundle":
        """A copy that no longer trusts the ticket key ``key_id`` (end of a rotation)."""
        keys = {kid: key for kid, key in self.ticket_keys.items() if kid != key_id}
        return TrustBundle(self.trust_domain, self.ca_pem, keys, self.version)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (for embedding in API responses and identity files)."""
        out: dict[str, Any] = {
            "trust_domain": self.trust_domain,
            "ca_pem": self.ca_pem,
            "ticket_keys": {
                kid: base64.b64encode(key.public_bytes_raw()).decode("ascii")
                for kid, key in sorted(self.ticket_keys.items())
            },
        }
        if self.version:
            out["version"] = self.version
        return out

    @classmethod
    def from_dict(cls, data: object) -> "TrustBundle":
        """Parse and validate the dict form; raises PkiError ``bundle_invalid``."""
        if not isinstance(data, dict):
            raise PkiError("bundle_invalid", "trust bundle must be a JSON object")
        expected = {"trust_domain", "ca_pem", "ticket_keys"}
        if not expected <= set(data) <= expected | {"version"}:
            raise PkiError(
                "bundle_invalid", f"trust bundle must have {sorted(expected)} (and a version)"
            )
        version = data.get("version", 0)
        if type(version) is not int:
            raise PkiError("bundle_invalid", "version must be an integer")
        trust_domain, ca_pem, raw_keys = data["trust_domain"], data["ca_pem"], data["ticket_keys"]
        if not isinstance(trust_domain, str) or not isinstance(ca_pem, str):
            raise PkiError("bundle_invalid", "trust_domain and ca_pem must be strings")
        if not isinstance(raw_keys, dict):
            raise PkiError("bundle_invalid", "ticket_keys must be an object")
        return cls(trust_domain, ca_pem, _decode_ticket_keys(raw_keys), version)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, data: str | bytes) -> "TrustBundle":
        """Parse the JSON form strictly; raises PkiError ``bundle_invalid``."""
        if len(data) > _MAX_BUNDLE_JSON:
            raise PkiError("bundle_invalid", "trust bundle JSON is too large")
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise PkiError("bundle_invalid", "trust bundle is not valid JSON") from exc
        return cls.from_dict(parsed)


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 hex of a certificate's DER (the form enrollment tokens pin)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _load_ca_certificates(ca_pem: str) -> tuple[x509.Certificate, ...]:
    try:
        certificates = x509.load_pem_x509_certificates(ca_pem.encode("ascii"))
    except PARSE_ERRORS as exc:
        raise PkiError("bundle_invalid", "ca_pem does not hold PEM certificates") from exc
    for cert in certificates:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound as exc:
            raise PkiError("bundle_invalid", "a bundle certificate is not a CA") from exc
        except PARSE_ERRORS as exc:
            raise PkiError("bundle_invalid", "a bundle certificate cannot be parsed") from exc
        if not constraints.ca:
            raise PkiError("bundle_invalid", "a bundle certificate is not a CA")
    return tuple(certificates)


def _decode_ticket_keys(raw: Mapping[Any, Any]) -> dict[str, ed25519.Ed25519PublicKey]:
    keys: dict[str, ed25519.Ed25519PublicKey] = {}
    for kid, encoded in raw.items():
        if not isinstance(kid, str) or not isinstance(encoded, str):
            raise PkiError("bundle_invalid", "ticket keys must map strings to base64 strings")
        try:
            key_bytes = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PkiError("bundle_invalid", f"ticket key {kid!r} is not valid base64") from exc
        if len(key_bytes) != 32:
            raise PkiError("bundle_invalid", f"ticket key {kid!r} is not 32 bytes")
        keys[kid] = ed25519.Ed25519PublicKey.from_public_bytes(key_bytes)
    return keys
