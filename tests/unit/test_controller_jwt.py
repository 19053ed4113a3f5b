"""The controller's JWT authority: a persisted ES256 key, its JWKS, and JWT-SVIDs for callers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.controller_harness import Harness, error_code, make_harness
from umbranet.controller.home import load_home
from umbranet.pki import PkiError
from umbranet.pki.jwt_svid import JwtBundle, verify_jwt_svid


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def test_the_jwt_bundle_is_public_and_lists_the_signing_key(h: Harness) -> None:
    response = h.client().get("/v1/jwt-bundle")
    assert response.status_code == 200, response.text
    jwks = response.json()
    authority = h.loaded.authority.jwt_authority
    assert jwks == authority.bundle.to_jwks()
    (key,) = jwks["keys"]
    assert (key["kty"], key["crv"], key["use"], key["kid"]) == (
        "EC",
        "P-256",
        "jwt-svid",
        authority.key_id,
    )


def test_a_caller_gets_a_jwt_svid_naming_itself(h: Harness) -> None:
    alice = h.new_device("alice", ["eng"])
    response = h.client(alice).post("/v1/jwt-svid", json={"audience": ["billing", "audit"]})
    assert response.status_code == 200, response.text
    body = response.json()
    bundle = JwtBundle.parse(h.client().get("/v1/jwt-bundle").content)
    svid = verify_jwt_svid(
        body["token"], bundle, trust_domain="demo.umbra", audience="audit", now=h.clock()
    )
    assert str(svid.spiffe_id) == alice.spiffe_id
    assert svid.audience == ("billing", "audit")
    assert svid.expires_at == h.clock() + timedelta(minutes=5)
    assert body["expires_at"].startswith(svid.expires_at.isoformat()[:19])
    h.clock.advance(timedelta(minutes=5))
    with pytest.raises(PkiError) as info:
        verify_jwt_svid(
            body["token"], bundle, trust_domain="demo.umbra", audience="audit", now=h.clock()
        )
    assert info.value.code == "jwt_expired"


def test_jwt_svids_need_a_client_certificate_and_an_audience(h: Harness) -> None:
    response = h.client().post("/v1/jwt-svid", json={"audience": ["billing"]})
    assert (response.status_code, error_code(response)) == (401, "client_cert_required")
    alice = h.new_device("alice", ["eng"])
    for body in ({"audience": []}, {"audience": [""]}, {}, {"audience": ["x"] * 17}):
        response = h.client(alice).post("/v1/jwt-svid", json=body)
        assert (response.status_code, error_code(response)) == (422, "invalid_request"), body


def test_a_disabled_identity_gets_no_jwt_svid(h: Harness) -> None:
    alice = h.new_device("alice", ["eng"])
    assert h.client(h.admin).post("/v1/identities/alice/disable").status_code == 200
    response = h.client(alice).post("/v1/jwt-svid", json={"audience": ["billing"]})
    assert (response.status_code, error_code(response)) == (403, "identity_disabled")


def test_the_jwt_key_is_persisted_and_created_for_older_homes(h: Harness) -> None:
    key_file = h.loaded.home.jwt_key
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = load_home(h.home)
    try:
        assert again.authority.jwt_authority.key_id == h.loaded.authority.jwt_authority.key_id
    finally:
        again.db.dispose()
    key_file.unlink()  # a home initialised before JWT-SVIDs existed
    fresh = load_home(h.home)
    try:
        assert key_file.exists()
        assert fresh.authority.jwt_authority.key_id != h.loaded.authority.jwt_authority.key_id
    finally:
        fresh.db.dispose()
