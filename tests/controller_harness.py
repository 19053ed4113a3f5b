"""An in-process controller for tests: a real home directory, a real database, a fake
clock, and HTTP clients that present a chosen client certificate.

The TLS layer is replaced by `TlsScopeApp`, the same wrapper the server puts around the app
after a real handshake, so routes see exactly what they would see behind uvicorn.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from fastapi.testclient import TestClient

from umbranet.controller.api import create_app
from umbranet.controller.home import LoadedController, init_home, load_home
from umbranet.controller.metrics import Metrics
from umbranet.controller.server import TlsScopeApp
from umbranet.pki import (
    IdentityFile,
    generate_noise_keypair,
    generate_tls_key,
    key_to_pem,
    make_csr,
)
from umbranet.pki.noise_pop import NoiseChallenge, csr_binding, prove_noise_key
from umbranet.testing.clock import FakeClock


@dataclass
class Harness:
    home: Path
    loaded: LoadedController
    app: FastAPI
    clock: FakeClock
    metrics: Metrics
    admin: IdentityFile

    def client(
        self, identity: IdentityFile | None = None, *, der: bytes | None = None
    ) -> TestClient:
        """A sync client presenting `identity`'s certificate (or raw `der`, or nothing)."""
        if identity is not None:
            der = cert_der(identity)
        return TestClient(TlsScopeApp(self.app, der), base_url="https://testserver")

    def transport(self, identity: IdentityFile | None = None) -> httpx.ASGITransport:
        """An async transport for `ControllerClient` presenting `identity`'s certificate."""
        der = cert_der(identity) if identity is not None else None
        return httpx.ASGITransport(app=TlsScopeApp(self.app, der))

    def create_identity(
        self, name: str, attributes: list[str] | None = None, kind: str = "device"
    ) -> str:
        """Create an identity as admin; returns its enrollment token."""
        response = self.client(self.admin).post(
            "/v1/identities", json={"name": name, "kind": kind, "attributes": attributes or []}
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["enrollment_token"]
        return token

    def enroll(self, token: str) -> IdentityFile:
        """Enroll with a real key, CSR and Noise key; returns the identity file."""
        response, parts = enroll_request(self.client(), token)
        assert response.status_code == 200, response.text
        key_pem, noise_private = parts
        body = response.json()
        return IdentityFile(
            name=body["name"],
            spiffe_id=body["spiffe_id"],
            key_pem=key_pem,
            cert_pem=body["cert_pem"].encode(),
            bundle=self.loaded.authority.bundle,
            controller_url=self.loaded.authority.controller_url,
            noise_private_key=noise_private,
        )

    def new_device(self, name: str, attributes: list[str] | None = None) -> IdentityFile:
        return self.enroll(self.create_identity(name, attributes))


def cert_der(identity: IdentityFile) -> bytes:
    return identity.certificate.public_bytes(serialization.Encoding.DER)


def enroll_request(
    client: TestClient, token: str, *, csr_pem: str | None = None, noise: str | None = None
) -> tuple[httpx.Response, tuple[bytes, bytes]]:
    key = generate_tls_key()
    noise_private, noise_public = generate_noise_keypair()
    csr = make_csr(key)
    body = {
        "token": token,
        "csr_pem": csr_pem
        if csr_pem is not None
        else csr.public_bytes(serialization.Encoding.PEM).decode(),
        "noise_public_key": noise if noise is not None else base64.b64encode(noise_public).decode(),
        **noise_proof(client, noise_private, csr),
    }
    return client.post("/v1/enroll", json=body), (key_to_pem(key), noise_private)


def noise_proof(
    client: TestClient, noise_private: bytes, csr: x509.CertificateSigningRequest
) -> dict[str, str]:
    """A fresh challenge from the controller and the proof for it (request fields)."""
    data = client.get("/v1/noise-challenge").json()
    challenge = NoiseChallenge(data["challenge"], data["public_key"])
    return {
        "noise_challenge": challenge.challenge,
        "noise_proof": prove_noise_key(noise_private, challenge, csr_binding(csr)),
    }


def make_harness(tmp_path: Path, db_url: str | None = None) -> Iterator[Harness]:
    """A harness on `db_url` (default: SQLite in the home; see `tests.pg_harness.db_url`)."""
    clock = FakeClock()
    home = tmp_path / "home"
    _, admin = init_home(home, clock(), db_url=db_url)
    loaded = load_home(home)
    metrics = Metrics()
    app = create_app(loaded.db, loaded.authority, clock=clock, metrics=metrics)
    try:
        yield Harness(home, loaded, app, clock, metrics, admin)
    finally:
        loaded.db.dispose()


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    code: str = body["error"]["code"]
    return code


def refusal_reason(h: Harness, message: str) -> str:
    """The reason behind a refused ticket, as an admin looks it up by its decision id (the
    endpoint itself is told only the id)."""
    decision = message.split("decision ", 1)[1].split(";", 1)[0]
    response = h.client(h.admin).get(f"/v1/policy/decisions/{decision}")
    assert response.status_code == 200, response.text
    reason: str = response.json()["reason"]
    return reason
