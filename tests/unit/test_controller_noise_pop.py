"""Noise static keys are registered only with proof of possession, and only once."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.controller_harness import Harness, error_code, make_harness, noise_proof
from umbranet.pki import generate_noise_keypair, generate_tls_key, make_csr


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _enroll_body(
    h: Harness, token: str, *, noise_public: bytes, prover: bytes, csr_for_proof: object = None
) -> dict[str, str]:
    csr = make_csr(generate_tls_key())
    proof = noise_proof(h.client(), prover, csr_for_proof or csr)  # type: ignore[arg-type]
    return {
        "token": token,
        "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "noise_public_key": base64.b64encode(noise_public).decode(),
        **proof,
    }


def test_a_noise_key_cannot_be_registered_without_its_private_key(h: Harness) -> None:
    victim = h.new_device("victim")
    token = h.create_identity("mallory")
    mine, _ = generate_noise_keypair()
    # Mallory claims the victim's Noise public key, proving with a key of her own.
    body = _enroll_body(h, token, noise_public=victim.noise_public_key, prover=mine)
    response = h.client().post("/v1/enroll", json=body)
    assert (response.status_code, error_code(response)) == (401, "noise_proof_invalid")
    assert h.metrics.get("umbra_api_errors_total", code="noise_proof_invalid") == 1


def test_one_noise_key_cannot_be_registered_to_two_identities(h: Harness) -> None:
    first = h.new_device("first")
    token = h.create_identity("second")
    body = _enroll_body(
        h, token, noise_public=first.noise_public_key, prover=first.noise_private_key
    )
    response = h.client().post("/v1/enroll", json=body)
    assert (response.status_code, error_code(response)) == (409, "noise_key_in_use")


def test_a_proof_is_bound_to_its_csr(h: Harness) -> None:
    token = h.create_identity("alice")
    private, public = generate_noise_keypair()
    other_csr = make_csr(generate_tls_key())
    body = _enroll_body(h, token, noise_public=public, prover=private, csr_for_proof=other_csr)
    response = h.client().post("/v1/enroll", json=body)
    assert error_code(response) == "noise_proof_invalid"


def test_an_expired_or_forged_challenge_is_refused(h: Harness) -> None:
    token = h.create_identity("alice")
    private, public = generate_noise_keypair()
    body = _enroll_body(h, token, noise_public=public, prover=private)
    for bad in ("", "A" * 64, "not base64!", body["noise_challenge"][:-2] + "AA"):
        forged = {**body, "noise_challenge": bad}
        assert error_code(h.client().post("/v1/enroll", json=forged)) in {
            "noise_proof_invalid",
            "invalid_request",
        }
    h.clock.advance(timedelta(minutes=6))
    response = h.client().post("/v1/enroll", json=body)
    assert error_code(response) == "noise_proof_invalid"
    # The token was not spent by any of the refusals.
    h.clock.step_wall(timedelta(minutes=-6))
    assert h.client().post("/v1/enroll", json=body).status_code == 200


def test_renewal_needs_the_noise_key_too(h: Harness) -> None:
    alice = h.new_device("alice")
    stolen_tls_only, _ = generate_noise_keypair()  # a thief with the TLS key, not the Noise key
    csr = make_csr(generate_tls_key())
    body = {
        "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
        **noise_proof(h.client(), stolen_tls_only, csr),
    }
    response = h.client(alice).post("/v1/renew", json=body)
    assert (response.status_code, error_code(response)) == (401, "noise_proof_invalid")
    body.update(noise_proof(h.client(), alice.noise_private_key, csr))
    assert h.client(alice).post("/v1/renew", json=body).status_code == 200
