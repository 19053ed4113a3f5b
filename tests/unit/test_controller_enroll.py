"""Enrollment and renewal through the HTTP API, with real keys, CSRs and a fake clock."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.controller_harness import (
    Harness,
    enroll_request,
    error_code,
    make_harness,
    noise_proof,
)
from umbranet.pki import (
    CertificateAuthority,
    Signer,
    generate_tls_key,
    load_chain,
    make_csr,
    noise_public_key_of,
    verify_svid,
)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def test_enroll_issues_an_svid_bound_to_the_noise_key(h: Harness) -> None:
    alice = h.new_device("alice", ["eng"])
    peer = verify_svid(alice.certificate_chain, h.loaded.authority.bundle, h.clock())
    assert str(peer.spiffe_id) == "spiffe://demo.umbra/device/alice"
    assert noise_public_key_of(alice.certificate) == alice.noise_public_key
    assert peer.not_after - peer.not_before >= timedelta(hours=24)
    assert h.client(alice).get("/v1/me").json()["name"] == "alice"


def test_a_token_works_once(h: Harness) -> None:
    token = h.create_identity("alice")
    h.enroll(token)
    response, _ = enroll_request(h.client(), token)
    assert response.status_code == 409
    assert error_code(response) == "token_used"
    assert h.metrics.get("umbra_api_errors_total", code="token_used") == 1


def test_forged_and_garbage_tokens_are_refused(h: Harness) -> None:
    token = h.create_identity("alice")
    prefix, claims, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    for bad in (f"{prefix}.{claims}.{flipped}", "ue1.garbage.x", "", "x" * 4000):
        response, _ = enroll_request(h.client(), bad)
        assert response.status_code == 401, bad
        assert error_code(response) == "token_invalid"
    # The real token is still good after the failures.
    h.enroll(token)


def test_a_token_signed_by_another_controller_is_refused(h: Harness) -> None:
    other = Signer.generate()
    _, token = other.sign_enrollment_token(
        "spiffe://demo.umbra/device/alice",
        h.loaded.authority.controller_url,
        h.loaded.authority.bundle.ca_fingerprint(),
        h.clock(),
    )
    h.create_identity("alice")
    response, _ = enroll_request(h.client(), token)
    assert error_code(response) == "token_invalid"


def test_an_expired_token_is_refused(h: Harness) -> None:
    token = h.create_identity("alice")
    h.clock.advance(timedelta(hours=25))
    response, _ = enroll_request(h.client(), token)
    assert response.status_code == 401
    assert error_code(response) == "token_expired"


def test_a_bad_csr_leaves_the_token_usable(h: Harness) -> None:
    token = h.create_identity("alice")
    response, _ = enroll_request(h.client(), token, csr_pem="-----BEGIN CERTIFICATE REQUEST-----")
    assert response.status_code == 400
    assert error_code(response) == "csr_invalid"
    h.enroll(token)


def test_a_bad_noise_key_is_refused(h: Harness) -> None:
    token = h.create_identity("alice")
    for noise in ("not base64!", base64.b64encode(b"short").decode()):
        response, _ = enroll_request(h.client(), token, noise=noise)
        assert response.status_code == 400
        assert error_code(response) == "noise_key_invalid"


def test_a_disabled_identity_cannot_enroll(h: Harness) -> None:
    token = h.create_identity("alice")
    assert h.client(h.admin).post("/v1/identities/alice/disable").status_code == 200
    response, _ = enroll_request(h.client(), token)
    assert response.status_code == 403
    assert error_code(response) == "identity_disabled"


def test_re_enrollment_replaces_the_old_certificate(h: Harness) -> None:
    first = h.new_device("alice")
    token = h.client(h.admin).post("/v1/identities/alice/enrollments").json()["enrollment_token"]
    second = h.enroll(token)
    assert h.client(second).get("/v1/me").status_code == 200
    response = h.client(first).get("/v1/me")
    assert response.status_code == 401
    assert error_code(response) == "cert_superseded"


def test_renew_keeps_the_previous_certificate_valid(h: Harness) -> None:
    alice = h.new_device("alice")

    def renew() -> x509.Certificate:
        csr = make_csr(generate_tls_key())
        pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        proof = noise_proof(h.client(), alice.noise_private_key, csr)
        response = h.client(alice).post("/v1/renew", json={"csr_pem": pem, **proof})
        assert response.status_code == 200, response.text
        return load_chain(response.json()["cert_pem"])[0]

    h.clock.advance(timedelta(hours=13))
    new_cert = renew()
    assert noise_public_key_of(new_cert) == alice.noise_public_key
    assert new_cert.not_valid_after_utc > alice.certificate.not_valid_after_utc
    # The first certificate is now the previous one: still accepted.
    assert h.client(alice).get("/v1/me").status_code == 200
    # One more renewal and it is two generations old: refused.
    renew()
    assert error_code(h.client(alice).get("/v1/me")) == "cert_superseded"


def test_renew_needs_a_client_certificate_and_a_valid_csr(h: Harness) -> None:
    alice = h.new_device("alice")
    proof = noise_proof(h.client(), alice.noise_private_key, make_csr(generate_tls_key()))
    assert error_code(h.client().post("/v1/renew", json={"csr_pem": "x", **proof})) == (
        "client_cert_required"
    )
    response = h.client(alice).post("/v1/renew", json={"csr_pem": "garbage", **proof})
    assert response.status_code == 400
    assert error_code(response) == "csr_invalid"


def test_certificates_from_another_ca_are_untrusted(h: Harness) -> None:
    other = CertificateAuthority.create("demo.umbra", h.clock())
    cert = other.issue_svid(
        make_csr(generate_tls_key()), "spiffe://demo.umbra/admin/admin", None, h.clock()
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    response = h.client(der=der).get("/v1/identities")
    assert response.status_code == 401
    assert error_code(response) == "cert_untrusted"


def test_a_valid_svid_of_an_unknown_identity_is_refused(h: Harness) -> None:
    cert = h.loaded.authority.ca.issue_svid(
        make_csr(generate_tls_key()), "spiffe://demo.umbra/device/ghost", None, h.clock()
    )
    response = h.client(der=cert.public_bytes(serialization.Encoding.DER)).get("/v1/me")
    assert response.status_code == 401
    assert error_code(response) == "unknown_identity"


def test_an_expired_client_certificate_is_refused(h: Harness) -> None:
    alice = h.new_device("alice")
    h.clock.advance(timedelta(hours=25))
    response = h.client(alice).get("/v1/me")
    assert response.status_code == 401
    assert error_code(response) == "cert_expired"
