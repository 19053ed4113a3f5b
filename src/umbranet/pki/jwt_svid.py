"""JWT-SVIDs: short-lived ES256 JSON Web Tokens naming a SPIFFE ID, and the JWKS that verifies them.

Why a second token format next to our own tickets: the SPIFFE Workload API hands workloads
JWT-SVIDs that any JOSE library checks, so a workload can prove its identity over a plain
HTTP header to software that knows nothing of Umbranet. The controller holds one ECDSA P-256
key for them (`JwtAuthority`); its public half is published as a JWKS (`JwtBundle`).

ES256 and not EdDSA: every JWT library verifies ES256, several (and some SPIFFE clients)
handle EdDSA poorly. The signature is the JOSE form, ``r || s`` as two 32-byte big-endian
integers, not the DER that `cryptography` produces.

Token: ``b64url(header) . b64url(claims) . b64url(signature)``, no padding.
Header: ``{"alg": "ES256", "kid": <key id>, "typ": "JWT"}``; anything but ES256 (``none``
above all) is refused before a key is even looked up. Claims: ``sub`` (a SPIFFE ID of the
trust domain), ``aud`` (a list of strings), ``exp`` and ``iat`` (unix seconds).
Key id: the first 16 hex characters of the SHA-256 of the uncompressed public point.

Pure: no clock reads (``now`` is an argument), no IO. Every defect of an input raises
`PkiError` with a ``jwt_*`` code; nothing else escapes `verify_jwt_svid` or `JwtBundle.parse`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from umbranet.pki.errors import PARSE_ERRORS, PkiError, PkiUsageError, require_utc
from umbranet.pki.keys import key_to_pem
from umbranet.pki.spiffe_id import SpiffeId

__all__ = [
    "JWT_ALGORITHM",
    "JWT_SVID_LIFETIME",
    "MAX_TOKEN_LENGTH",
    "JwtAuthority",
    "JwtBundle",
    "JwtSvid",
    "jwt_key_id",
    "verify_jwt_svid",
]

JWT_ALGORITHM = "ES256"
JWT_SVID_LIFETIME = timedelta(minutes=5)
"""Short: a JWT-SVID is a bearer token; whoever holds it can replay it until it expires."""
MAX_TOKEN_LENGTH = 8192
"""Ours are ~500 bytes; the bound keeps a hostile token from costing more than a few KiB."""
MAX_AUDIENCES = 16
CLOCK_SKEW = timedelta(seconds=30)
"""How far in the future ``iat`` may be before the token is refused as malformed."""

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_COORDINATE = 32  # bytes of one P-256 coordinate and of r and s


@dataclass(frozen=True, slots=True)
class JwtSvid:
    """A verified JWT-SVID: who it names, for whom, until when, and every claim it carried."""

    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expires_at: datetime
    issued_at: datetime | None
    key_id: str
    claims: Mapping[str, Any]


class JwtAuthority:
    """The controller's JWT-SVID signing key (ECDSA P-256)."""

    __slots__ = ("_key", "_key_id", "_public_key")

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise PkiUsageError("a JwtAuthority needs an ECDSA P-256 private key")
        self._key = private_key
        self._public_key = private_key.public_key()
        self._key_id = jwt_key_id(self._public_key)

    @classmethod
    def generate(cls) -> JwtAuthority:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes) -> JwtAuthority:
        """Load an unencrypted PKCS#8 PEM P-256 key; raises PkiError ``key_invalid``."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except PARSE_ERRORS as exc:
            raise PkiError("key_invalid", "cannot parse the JWT signing key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise PkiError("key_invalid", "the JWT signing key must be ECDSA P-256")
        return cls(key)

    def to_pem(self) -> bytes:
        return key_to_pem(self._key)

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    @property
    def bundle(self) -> JwtBundle:
        """The JWKS holding just this key."""
        return JwtBundle({self._key_id: self._public_key})

    def sign(
        self,
        subject: SpiffeId,
        audience: Sequence[str],
        now: datetime,
        lifetime: timedelta = JWT_SVID_LIFETIME,
    ) -> tuple[str, datetime]:
        """A JWT-SVID for `subject` and `audience`; returns (token, expires_at)."""
        now = require_utc(now)
        if lifetime <= timedelta(0):
            raise PkiUsageError("lifetime must be positive")
        audiences = list(audience)
        if not audiences or len(audiences) > MAX_AUDIENCES:
            raise PkiUsageError(f"a JWT-SVID needs 1..{MAX_AUDIENCES} audiences")
        if not all(isinstance(a, str) and a for a in audiences):
            raise PkiUsageError("audiences must be non-empty strings")
        issued = int(now.timestamp())
        expires = issued + max(int(lifetime.total_seconds()), 1)
        header = {"alg": JWT_ALGORITHM, "kid": self._key_id, "typ": "JWT"}
        claims = {"sub": str(subject), "aud": audiences, "exp": expires, "iat": issued}
        signing_input = f"{_b64_json(header)}.{_b64_json(claims)}".encode("ascii")
        der = self._key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        raw = r.to_bytes(_COORDINATE, "big") + s.to_bytes(_COORDINATE, "big")
        token = f"{signing_input.decode('ascii')}.{_b64encode(raw)}"
        return token, datetime.fromtimestamp(expires, UTC)


class JwtBundle:
    """Public JWT authorities of one trust domain, by key id; JSON form is a JWKS."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, ec.EllipticCurvePublicKey]) -> None:
        self._keys = dict(keys)

    @property
    def keys(self) -> Mapping[str, ec.EllipticCurvePublicKey]:
        return dict(self._keys)

    def to_jwks(self) -> dict[str, Any]:
        """``{"keys": [{kty, crv, x, y, kid, use: "jwt-svid"}]}`` (the SPIFFE bundle form)."""
        entries = []
        for kid, key in sorted(self._keys.items()):
            numbers = key.public_numbers()
            entries.append(
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "x": _b64encode(numbers.x.to_bytes(_COORDINATE, "big")),
                    "y": _b64encode(numbers.y.to_bytes(_COORDINATE, "big")),
                    "kid": kid,
                    "use": "jwt-svid",
                }
            )
        return {"keys": entries}

    def to_json(self) -> bytes:
        return json.dumps(self.to_jwks(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes | str | Mapping[str, Any]) -> JwtBundle:
        """A bundle from a JWKS (bytes, text or decoded); keys other than EC P-256 are skipped
        (a JWKS may carry them for other uses). Raises PkiError ``jwt_bundle_invalid``."""
        try:
            document = data if isinstance(data, Mapping) else _loads(data)
        except PkiError as exc:
            raise PkiError("jwt_bundle_invalid", "the JWT bundle is not JSON") from exc
        entries = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(entries, list):
            raise PkiError("jwt_bundle_invalid", 'a JWKS is an object with a "keys" list')
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise PkiError("jwt_bundle_invalid", "a JWKS entry is not an object")
            if entry.get("kty") != "EC" or entry.get("crv") != "P-256":
                continue
            kid = entry.get("kid")
            if not isinstance(kid, str) or not kid:
                raise PkiError("jwt_bundle_invalid", "a JWKS entry has no kid")
            keys[kid] = _ec_key(entry)
        return cls(keys)


def jwt_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """First 16 hex characters of the SHA-256 of the uncompressed public point."""
    point = public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return hashlib.sha256(point).hexdigest()[:16]


def verify_jwt_svid(
    token: str | bytes,
    bundle: JwtBundle,
    *,
    trust_domain: str,
    audience: str,
    now: datetime,
) -> JwtSvid:
    """Check `token` fully: form, ``alg`` ES256, signature by a key of `bundle`, ``exp``
    after `now`, `audience` among ``aud``, ``sub`` a SPIFFE ID of `trust_domain`.

    Codes: ``jwt_malformed``, ``jwt_unknown_key``, ``jwt_forged``, ``jwt_expired``,
    ``jwt_wrong_audience``, ``wrong_trust_domain``.
    """
    now = require_utc(now)
    header, claims, signing_input, signature = _split(token)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise PkiError("jwt_malformed", "the JWT header has no kid")
    key = bundle.keys.get(kid)
    if key is None:
        raise PkiError("jwt_unknown_key", "the JWT was signed by a key not in the bundle")
    r = int.from_bytes(signature[:_COORDINATE], "big")
    s = int.from_bytes(signature[_COORDINATE:], "big")
    try:
        key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise PkiError("jwt_forged", "the JWT signature does not verify") from exc
    svid = _claims(claims, kid)
    if now >= svid.expires_at:
        raise PkiError("jwt_expired", "the JWT-SVID has expired")
    if svid.issued_at is not None and svid.issued_at > now + CLOCK_SKEW:
        raise PkiError("jwt_malformed", "the JWT-SVID was issued in the future")
    if audience not in svid.audience:
        raise PkiError("jwt_wrong_audience", "the JWT-SVID is not meant for this audience")
    if svid.spiffe_id.trust_domain != trust_domain:
        raise PkiError("wrong_trust_domain", "the JWT-SVID names another trust domain")
    return svid


# -- internals ------------------------------------------------------------------------------


def _split(token: str | bytes) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError as exc:
            raise PkiError("jwt_malformed", "a JWT is ASCII") from exc
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise PkiError("jwt_malformed", f"a JWT is a string of at most {MAX_TOKEN_LENGTH} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise PkiError("jwt_malformed", "a JWT has three dot-separated parts")
    header = _object(_b64decode(parts[0]), "header")
    # Refuse any other algorithm before looking at keys: no "none", no HS256 with a public key.
    if header.get("alg") != JWT_ALGORITHM:
        raise PkiError("jwt_malformed", f"only {JWT_ALGORITHM} JWT-SVIDs are accepted")
    typ = header.get("typ")
    if typ is not None and typ not in ("JWT", "JOSE"):
        raise PkiError("jwt_malformed", "the JWT header has an unexpected typ")
    if "crit" in header:
        raise PkiError("jwt_malformed", "critical JWT header extensions are not supported")
    claims = _object(_b64decode(parts[1]), "claims")
    signature = _b64decode(parts[2])
    if len(signature) != 2 * _COORDINATE:
        raise PkiError("jwt_malformed", "an ES256 signature is 64 bytes (r || s)")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def _claims(claims: Mapping[str, Any], kid: str) -> JwtSvid:
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise PkiError("jwt_malformed", "the JWT-SVID has no sub")
    try:
        spiffe_id = SpiffeId.parse(sub)
    except PkiError as exc:
        raise PkiError("jwt_malformed", "the JWT-SVID sub is not a SPIFFE ID") from exc
    aud = claims.get("aud")
    audience = (aud,) if isinstance(aud, str) else aud
    if (
        not isinstance(audience, (list, tuple))
        or not audience
        or not all(isinstance(a, str) for a in audience)
    ):
        raise PkiError("jwt_malformed", "the JWT-SVID aud is not a string or a list of strings")
    exp = _timestamp(claims.get("exp"), "exp")
    if exp is None:
        raise PkiError("jwt_malformed", "the JWT-SVID has no exp")
    iat = _timestamp(claims.get("iat"), "iat")
    return JwtSvid(spiffe_id, tuple(audience), exp, iat, kid, dict(claims))


def _timestamp(value: object, name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PkiError("jwt_malformed", f"the JWT-SVID {name} is not a number")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise PkiError("jwt_malformed", f"the JWT-SVID {name} is out of range") from exc


def _ec_key(entry: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    try:
        x = _b64decode(str(entry["x"]))
        y = _b64decode(str(entry["y"]))
    except (KeyError, PkiError) as exc:
        raise PkiError("jwt_bundle_invalid", "a JWKS EC entry needs x and y") from exc
    if len(x) != _COORDINATE or len(y) != _COORDINATE:
        raise PkiError("jwt_bundle_invalid", "P-256 coordinates are 32 bytes")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    )
    try:
        return numbers.public_key()
    except ValueError as exc:
        raise PkiError("jwt_bundle_invalid", "a JWKS key is not on the P-256 curve") from exc


def _object(data: bytes, what: str) -> dict[str, Any]:
    value = _loads(data)
    if not isinstance(value, dict):
        raise PkiError("jwt_malformed", f"the JWT {what} is not a JSON object")
    return value


def _loads(data: bytes | str) -> Any:
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise PkiError("jwt_malformed", "a JWT part is not valid JSON") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_json(value: Mapping[str, Any]) -> str:
    return _b64encode(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def _b64decode(text: str) -> bytes:
    # The stdlib decoder skips characters outside the alphabet; a token must not have any.
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise PkiError("jwt_malformed", "a JWT part is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise PkiError("jwt_malformed", "a JWT part is not unpadded base64url") from exc
