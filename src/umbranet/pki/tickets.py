"""Session tickets: the controller's signed "identity X may dial/bind service S until T".

Routers and hosting endpoints verify tickets offline against the trust bundle, so existing
grants keep working while the controller is down; the short lifetime (10 minutes by default)
bounds how long a revoked grant can live on without a push.

Claims (unix seconds)::

    {"jti": id, "sub": SPIFFE ID, "svc": service, "act": "dial"|"bind",
     "iat": issued, "exp": expires, "kid": signing key id}

Optional: "att" (attributes), "ep" (epoch), "prt" (port), and ``cnf`` (`KEY_BINDING_CLAIM`):
the holder's certificate keys, a list of 1-2 SHA-256 hex fingerprints of a certificate's
SubjectPublicKeyInfo (`certificate_key_fingerprint`): its current certificate's key and,
during a renewal, the previous one's. A ticket bound this way is valid only over a TLS
connection whose client certificate has one of those keys: a revoked or stolen certificate
with a fresh ticket of the same identity gets nowhere (routers: ``ticket_wrong_key``;
hosts check the dialer's certificate against it too).

Clock skew: a ticket issued up to `ISSUED_AT_SKEW` in the future is accepted (the controller's
clock may run ahead); expiry gets no grace, ``now >= exp`` is expired.
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from umbranet.pki.bundle import TrustBundle
from umbranet.pki.errors import PkiError, require_utc
from umbranet.pki.spiffe_id import SpiffeId
from umbranet.pki.tokens import (
    TokenFormatError,
    claim_int,
    claim_str,
    decode_token,
    require_keys,
)

__all__ = [
    "ISSUED_AT_SKEW",
    "KEY_BINDING_CLAIM",
    "RELAY_SERVICE_PREFIX",
    "TICKET_LIFETIME",
    "TICKET_PREFIX",
    "Action",
    "Ticket",
    "certificate_key_fingerprint",
    "relay_service",
    "verify_ticket",
]

TICKET_PREFIX = "ut1"
TICKET_LIFETIME = timedelta(minutes=10)
ISSUED_AT_SKEW = timedelta(seconds=30)

_CLAIMS = frozenset({"jti", "sub", "svc", "act", "iat", "exp", "kid"})
KEY_BINDING_CLAIM = "cnf"
"""The claim binding a ticket to its holder's certificate key(s); see the module doc."""
_OPTIONAL = frozenset({"att", "ep", "prt", KEY_BINDING_CLAIM})
_FINGERPRINT_HEX = 64


class Action(StrEnum):
    """What a ticket allows: dial a service, bind (host) it, or (network mode) have routers
    relay WireGuard datagrams to one peer; a relay ticket's service is `relay_service(key)`."""

    DIAL = "dial"
    BIND = "bind"
    RELAY = "relay"


RELAY_SERVICE_PREFIX = "wg:"


def relay_service(peer_key: bytes) -> str:
    """The `svc` of a relay ticket towards the peer whose X25519 key is `peer_key`."""
    return RELAY_SERVICE_PREFIX + peer_key.hex()


@dataclass(frozen=True, slots=True)
class Ticket:
    """The verified (or freshly signed) content of a session ticket."""

    id: str
    spiffe_id: str
    service: str
    action: Action
    issued_at: int
    expires_at: int
    key_id: str
    # The holder's attributes when the ticket was issued, so a host can authorize on them
    # offline; optional claim "att".
    attributes: tuple[str, ...] = ()
    # The controller's revocation epoch at issue (optional claim "ep"): routers refuse
    # tickets from before the latest policy change or revocation they were told about.
    epoch: int = 0
    # The service port the dial was decided for (optional claim "prt"): a policy may allow a
    # service only on some ports, and the host learns which one the dialer was granted.
    port: int | None = None
    # SHA-256 hex of the SubjectPublicKeyInfo of each certificate key the ticket may be used
    # with (claim "cnf"); empty: not bound (tickets from before binding existed).
    key_binding: tuple[str, ...] = ()

    def bound_to(self, key_fingerprint: str) -> bool:
        """May this ticket be presented over a connection with this certificate key?"""
        return not self.key_binding or key_fingerprint in self.key_binding

    def to_claims(self) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "jti": self.id,
            "sub": self.spiffe_id,
            "svc": self.service,
            "act": self.action.value,
            "iat": self.issued_at,
            "exp": self.expires_at,
            "kid": self.key_id,
        }
        if self.attributes:
            claims["att"] = list(self.attributes)
        if self.epoch:
            claims["ep"] = self.epoch
        if self.port is not None:
            claims["prt"] = self.port
        if self.key_binding:
            claims[KEY_BINDING_CLAIM] = list(self.key_binding)
        return claims

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> "Ticket":
        """Validate the claim set; raises `TokenFormatError`."""
        attributes = _attributes(claims.get("att", []))
        if "cnf" in claims:
            _key_binding(claims["cnf"])
        epoch = claim_int(claims, "ep") if "ep" in claims else 0
        port = claim_int(claims, "prt") if "prt" in claims else None
        if port is not None and not 0 < port < 65536:
            raise TokenFormatError("claim 'prt' must be a port number (1-65535)")
        key_binding = _key_binding(claims[KEY_BINDING_CLAIM]) if KEY_BINDING_CLAIM in claims else ()
        require_keys({k: v for k, v in claims.items() if k not in _OPTIONAL}, _CLAIMS)
        subject = claim_str(claims, "sub", 2048)
        try:
            SpiffeId.parse(subject)
        except PkiError as exc:
            raise TokenFormatError(f"claim 'sub' is not a SPIFFE ID: {exc.reason}") from exc
        action = claim_str(claims, "act")
        if action not in {a.value for a in Action}:
            raise TokenFormatError("claim 'act' must be 'dial' or 'bind'")
        issued_at, expires_at = claim_int(claims, "iat"), claim_int(claims, "exp")
        if expires_at <= issued_at:
            raise TokenFormatError("ticket expires before it was issued")
        return cls(
            id=claim_str(claims, "jti", 128),
            spiffe_id=subject,
            service=claim_str(claims, "svc"),
            action=Action(action),
            issued_at=issued_at,
            expires_at=expires_at,
            key_id=claim_str(claims, "kid", 64),
            attributes=attributes,
            epoch=epoch,
            port=port,
            key_binding=key_binding,
        )


def certificate_key_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 hex of a certificate's SubjectPublicKeyInfo DER: what claim "cnf" lists."""
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _key_binding(value: object) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= 2
        or not all(
            isinstance(v, str)
            and len(v) == _FINGERPRINT_HEX
            and all(c in "0123456789abcdef" for c in v)
            for v in value
        )
    ):
        raise TokenFormatError(f"claim {KEY_BINDING_CLAIM!r} must list 1-2 key fingerprints")
    return tuple(value)


def _attributes(value: object) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or len(value) > 256
        or not all(isinstance(a, str) and 0 < len(a) <= 128 for a in value)
    ):
        raise TokenFormatError("claim 'att' must be a list of up to 256 short strings")
    return tuple(value)


def verify_ticket(token: str, bundle: TrustBundle, now: datetime) -> Ticket:
    """Check ``token``'s format, signature (against ``bundle.ticket_keys``) and time.

    Raises PkiError ``ticket_malformed``, ``ticket_unknown_key``, ``ticket_forged`` or
    ``ticket_expired`` (also used for a ticket issued too far in the future).
    The caller still compares the ticket's identity, service and action with the request.
    """
    now_ts = require_utc(now).timestamp()
    try:
        decoded = decode_token(token, TICKET_PREFIX)
        ticket = Ticket.from_claims(decoded.claims)
    except TokenFormatError as exc:
        raise PkiError("ticket_malformed", exc.reason) from exc
    key = bundle.ticket_keys.get(ticket.key_id)
    if key is None:
        raise PkiError("ticket_unknown_key", "the ticket's signing key is not in the bundle")
    if not decoded.signature_valid(key):
        raise PkiError("ticket_forged", "the ticket signature is invalid")
    if ticket.issued_at > now_ts + ISSUED_AT_SKEW.total_seconds():
        raise PkiError("ticket_expired", "the ticket is issued in the future (clock skew?)")
    if now_ts >= ticket.expires_at:
        raise PkiError("ticket_expired", "the ticket has expired")
    return ticket
