"""JWT-SVIDs: ES256 tokens round-trip, and every defect is refused with its own code."""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from umbranet.pki import PkiError, SpiffeId
from umbranet.pki.jwt_svid import JwtAuthority, JwtBundle, verify_jwt_svid

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TD = "demo.umbra"
ALICE = SpiffeId.parse("spiffe://demo.umbra/workload/alice")
AUTHORITY = JwtAuthority.generate()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _verify(token: str, audience: str = "billing", now: datetime = NOW, **kw: Any) -> Any:
    bundle = kw.pop("bundle", AUTHORITY.bundle)
    return verify_jwt_svid(
        token, bundle, trust_domain=kw.pop("trust_domain", TD), audience=audience, now=now
    )


def _code(token: str, **kw: Any) -> str:
    with pytest.raises(PkiError) as info:
        _verify(token, **kw)
    return info.value.code


def _resign(header: dict[str, Any], claims: dict[str, Any], key: JwtAuthority = AUTHORITY) -> str:
    """A token with arbitrary header and claims, properly ES256-signed (r || s)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    der = key._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _claims(**overrides: Any) -> dict[str, Any]:
    issued = int(NOW.timestamp())
    claims = {"sub": str(ALICE), "aud": ["billing"], "exp": issued + 300, "iat": issued}
    claims.update(overrides)
    return claims


HEADER = {"alg": "ES256", "kid": AUTHORITY.key_id, "typ": "JWT"}


def test_round_trip_carries_subject_audience_and_times() -> None:
    token, expires_at = AUTHORITY.sign(ALICE, ["billing", "audit"], NOW)
    assert expires_at == NOW + timedelta(minutes=5)
    svid = _verify(token, audience="audit")
    assert svid.spiffe_id == ALICE
    assert svid.audience == ("billing", "audit")
    assert svid.expires_at == expires_at
    assert svid.issued_at == NOW
    assert svid.key_id == AUTHORITY.key_id
    assert svid.claims["sub"] == str(ALICE)
    header = json.loads(_unb64(token.split(".")[0]))
    assert header == {"alg": "ES256", "kid": AUTHORITY.key_id, "typ": "JWT"}
    assert len(_unb64(token.split(".")[2])) == 64  # JOSE r || s, not DER


def test_expired_token_is_refused() -> None:
    token, expires_at = AUTHORITY.sign(ALICE, ["billing"], NOW)
    assert _verify(token, now=expires_at - timedelta(seconds=1))
    assert _code(token, now=expires_at) == "jwt_expired"


def test_wrong_audience_is_refused() -> None:
    token, _ = AUTHORITY.sign(ALICE, ["billing"], NOW)
    assert _code(token, audience="payroll") == "jwt_wrong_audience"


def test_other_trust_domain_is_refused() -> None:
    token, _ = AUTHORITY.sign(SpiffeId.parse("spiffe://other.td/workload/x"), ["billing"], NOW)
    assert _code(token) == "wrong_trust_domain"


def test_forged_signature_and_foreign_key_are_refused() -> None:
    token, _ = AUTHORITY.sign(ALICE, ["billing"], NOW)
    head, body, signature = token.split(".")
    raw = bytearray(_unb64(signature))
    raw[5] ^= 1
    assert _code(f"{head}.{body}.{_b64(bytes(raw))}") == "jwt_forged"
    # Claims changed after signing.
    other_body = _b64(json.dumps(_claims(sub="spiffe://demo.umbra/workload/mallory")).encode())
    assert _code(f"{head}.{other_body}.{signature}") == "jwt_forged"
    # Signed by another key that claims our kid.
    assert _code(_resign(HEADER, _claims(), JwtAuthority.generate())) == "jwt_forged"
    # Signed by a key the bundle does not hold.
    stranger = JwtAuthority.generate()
    stranger_token, _ = stranger.sign(ALICE, ["billing"], NOW)
    assert _code(stranger_token) == "jwt_unknown_key"


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "EdDSA", "ES384", None])
def test_other_algorithms_are_refused(alg: str | None) -> None:
    token = _resign({**HEADER, "alg": alg}, _claims())
    assert _code(token) == "jwt_malformed"
    head, body, _sig = token.split(".")
    assert _code(f"{head}.{body}.") == "jwt_malformed"  # the classic alg=none shape


@pytest.mark.parametrize(
    "claims",
    [
        _claims(sub=None),
        _claims(sub="https://demo.umbra/alice"),
        _claims(aud=[]),
        _claims(aud=[1]),
        _claims(aud=None),
        _claims(exp=None),
        _claims(exp="soon"),
        _claims(exp=True),
        _claims(exp=10**30),
        _claims(iat=int(NOW.timestamp()) + 3600),
    ],
)
def test_malformed_claims_are_refused(claims: dict[str, Any]) -> None:
    present = {k: v for k, v in claims.items() if v is not None}
    assert _code(_resign(HEADER, present)) == "jwt_malformed"


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", "!!!.e30.AAAA", "e30.e30.AAAA", "W10.e30.AAAA", "a" * 9000],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert _code(token) == "jwt_malformed"


def test_a_single_string_audience_is_accepted() -> None:
    assert _verify(_resign(HEADER, _claims(aud="billing"))).audience == ("billing",)


def test_key_and_bundle_round_trip() -> None:
    loaded = JwtAuthority.from_pem(AUTHORITY.to_pem())
    assert loaded.key_id == AUTHORITY.key_id
    jwks = AUTHORITY.bundle.to_jwks()
    (entry,) = jwks["keys"]
    assert entry["kty"] == "EC" and entry["crv"] == "P-256" and entry["use"] == "jwt-svid"
    assert entry["kid"] == AUTHORITY.key_id
    parsed = JwtBundle.parse(AUTHORITY.bundle.to_json())
    token, _ = AUTHORITY.sign(ALICE, ["billing"], NOW)
    assert _verify(token, bundle=parsed).spiffe_id == ALICE
    # Keys of other types are skipped, not fatal.
    mixed = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": "k"}, entry]}
    assert set(JwtBundle.parse(json.dumps(mixed)).keys) == {AUTHORITY.key_id}


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b"[]",
        b'{"keys": 1}',
        b'{"keys": [1]}',
        b'{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "k"}]}',
        b'{"keys": [{"kty": "EC", "crv": "P-256", "kid": "k"}]}',
    ],
)
def test_bad_bundles_are_refused(document: bytes) -> None:
    with pytest.raises(PkiError) as info:
        JwtBundle.parse(document)
    assert info.value.code == "jwt_bundle_invalid"


def test_a_point_off_the_curve_is_refused() -> None:
    entry = {
        "kty": "EC",
        "crv": "P-256",
        "kid": "k",
        "x": _b64(b"\x01" * 32),
        "y": _b64(b"\x02" * 32),
    }
    with pytest.raises(PkiError) as info:
        JwtBundle.parse({"keys": [entry]})
    assert info.value.code == "jwt_bundle_invalid"


@given(st.binary(max_size=600))
def test_random_bytes_only_raise_pki_errors(data: bytes) -> None:
    with pytest.raises(PkiError):
        _verify(data)  # type: ignore[arg-type]


@given(st.lists(st.text(alphabet="abcXYZ019-_=.!", max_size=80), min_size=1, max_size=4))
def test_random_token_shapes_only_raise_pki_errors(parts: list[str]) -> None:
    with pytest.raises(PkiError):
        _verify(".".join(parts))


@given(st.binary(max_size=300))
def test_random_bundles_only_raise_pki_errors(data: bytes) -> None:
    with contextlib.suppress(PkiError):
        JwtBundle.parse(data)
