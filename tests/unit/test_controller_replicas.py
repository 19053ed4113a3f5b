"""Active-active replicas: the network's keys sealed in the shared database, `join`, and a
replica started with the wrong key-encryption key.

Both replicas are what `umbra controller run` loads from its home: the first made by `init
--db --kek-file`, the second by `join`; each with its own engine and app on one database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.controller_harness import cert_der, enroll_request
from umbranet.cli.main import app as cli_app
from umbranet.controller.api import create_app
from umbranet.controller.home import LoadedController, init_home, load_home
from umbranet.controller.replica import join_home
from umbranet.controller.secrets import KeyEncryptionKey
from umbranet.controller.server import TlsScopeApp
from umbranet.home_layout import HomeError
from umbranet.pki import Action, IdentityFile, read_enrollment_token_unverified, verify_ticket
from umbranet.testing.clock import FakeClock

KEK, KEK_TEXT = KeyEncryptionKey.generate()


def _client(app: FastAPI, identity: IdentityFile | None = None) -> TestClient:
    der = cert_der(identity) if identity is not None else None
    return TestClient(TlsScopeApp(app, der), base_url="https://testserver")


@pytest.fixture
def replicas(
    tmp_path: Path, db_url: str
) -> Iterator[tuple[LoadedController, LoadedController, IdentityFile, FakeClock]]:
    clock = FakeClock()
    _, admin = init_home(tmp_path / "a", clock(), db_url=db_url, kek=KEK)
    join_home(tmp_path / "b", clock(), db_url=db_url, kek=KEK, address="127.0.0.1:9443")
    a = load_home(tmp_path / "a", kek=KEK)
    b = load_home(tmp_path / "b", kek=KEK)
    try:
        yield a, b, admin, clock
    finally:
        a.db.dispose()
        b.db.dispose()


def _enroll(app: FastAPI, token: str, loaded: LoadedController, name: str) -> IdentityFile:
    response, (key_pem, noise_private) = enroll_request(_client(app), token)
    assert response.status_code == 200, response.text
    body = response.json()
    return IdentityFile(
        name=name,
        spiffe_id=body["spiffe_id"],
        key_pem=key_pem,
        cert_pem=body["cert_pem"].encode(),
        bundle=loaded.authority.bundle,
        controller_url=loaded.authority.controller_url,
        noise_private_key=noise_private,
    )


def test_two_replicas_sign_as_one_network(
    replicas: tuple[LoadedController, LoadedController, IdentityFile, FakeClock],
) -> None:
    a, b, admin, clock = replicas
    app_a = create_app(a.db, a.authority, clock=clock)
    app_b = create_app(b.db, b.authority, clock=clock)
    assert a.authority.bundle.to_dict() == b.authority.bundle.to_dict()
    assert (a.config.url, b.config.url) == ("https://127.0.0.1:8443", "https://127.0.0.1:9443")
    service = {"name": "db", "dial_attributes": ["eng"], "bind_attributes": ["dbhost"]}
    assert _client(app_b, admin).post("/v1/services", json=service).status_code == 201

    # A token minted by A enrolls on B; the certificate B issues is accepted by A.
    body = {"name": "alice", "kind": "device", "attributes": ["eng"]}
    token = _client(app_a, admin).post("/v1/identities", json=body).json()["enrollment_token"]
    alice = _enroll(app_b, token, b, "alice")
    assert _client(app_a, alice).get("/v1/me").status_code == 200

    # Tickets from either replica verify against the one bundle routers hold.
    for app in (app_a, app_b):
        response = _client(app, alice).post("/v1/tickets", json={"service": "db", "action": "dial"})
        assert response.status_code == 200, response.text
        ticket = verify_ticket(response.json()["ticket"], a.authority.bundle, clock())
        assert (ticket.spiffe_id, ticket.action) == (alice.spiffe_id, Action.DIAL)


def test_no_network_key_is_left_on_disk(
    replicas: tuple[LoadedController, LoadedController, IdentityFile, FakeClock],
) -> None:
    a, b, _, _ = replicas
    for loaded in (a, b):
        assert not loaded.home.ca_key.exists()
        assert not loaded.home.signer_key.exists()
        assert not loaded.home.jwt_key.exists()
        assert json.loads(loaded.home.config_json.read_text())["secrets"] == "database"
    with a.db.session() as session:
        sealed = session.execute(sa.text("SELECT name, sealed FROM controller_secrets")).all()
    assert {name for name, _ in sealed} == {"ca.key", "ca.pem", "signer.key", "jwt.key"}
    assert all(b"PRIVATE KEY" not in text.encode() for _, text in sealed)


def _snapshot(loaded: LoadedController) -> list[object]:
    tables = ("controller_secrets", "identities", "audit_events", "controller_state")
    with loaded.db.engine.connect() as connection:
        return [connection.execute(sa.text(f"SELECT * FROM {t} ORDER BY 1")).all() for t in tables]


def test_the_wrong_key_refuses_to_start_and_writes_nothing(
    tmp_path: Path,
    db_url: str,
    replicas: tuple[LoadedController, LoadedController, IdentityFile, FakeClock],
) -> None:
    a, _, _, clock = replicas
    before = _snapshot(a)
    wrong, _ = KeyEncryptionKey.generate()
    with pytest.raises(HomeError) as refused:
        load_home(tmp_path / "b", kek=wrong)
    assert refused.value.code == "kek_mismatch"
    assert "refusing to start" in refused.value.message
    with pytest.raises(HomeError) as joined:
        join_home(tmp_path / "c", clock(), db_url=db_url, kek=wrong, address="127.0.0.1:9444")
    assert joined.value.code == "kek_mismatch"
    assert not (tmp_path / "c" / "controller").exists()
    assert _snapshot(a) == before


def test_a_sealed_secret_does_not_open_under_another_name() -> None:
    sealed = KEK.seal("signer.key", b"secret")
    assert KEK.open("signer.key", sealed) == b"secret"
    with pytest.raises(HomeError) as moved:
        KEK.open("jwt.key", sealed)
    assert moved.value.code == "kek_mismatch"


def test_without_the_key_the_replica_says_how_to_give_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UMBRA_KEK", raising=False)
    monkeypatch.delenv("UMBRA_KEK_FILE", raising=False)
    init_home(tmp_path / "a", datetime.now(UTC), kek=KEK)
    with pytest.raises(HomeError) as missing:
        load_home(tmp_path / "a")
    assert missing.value.code == "kek_missing"
    monkeypatch.setenv("UMBRA_KEK", KEK_TEXT)
    load_home(tmp_path / "a").db.dispose()


def test_cli_init_creates_the_key_and_join_uses_it(tmp_path: Path, pg_url: str) -> None:
    runner = CliRunner()
    kek_file = tmp_path / "kek"
    first = runner.invoke(
        cli_app,
        ["--home", str(tmp_path / "a"), "--json", "controller", "init", "--db", pg_url,
         "--kek-file", str(kek_file)],
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["secrets"] == "database"
    assert kek_file.stat().st_mode & 0o777 == 0o600
    second = runner.invoke(
        cli_app,
        ["--home", str(tmp_path / "b"), "--json", "controller", "join", "--db", pg_url,
         "--kek-file", str(kek_file), "--address", "127.0.0.1:9443"],
    )  # fmt: skip
    assert second.exit_code == 0, second.output
    assert json.loads(second.output)["url"] == "https://127.0.0.1:9443"
    load_home(tmp_path / "b", kek=KeyEncryptionKey.from_text(kek_file.read_text())).db.dispose()
    wrong = tmp_path / "wrong"
    wrong.write_text(KeyEncryptionKey.generate()[1])
    third = runner.invoke(
        cli_app,
        ["--home", str(tmp_path / "c"), "--json", "controller", "join", "--db", pg_url,
         "--kek-file", str(wrong)],
    )  # fmt: skip
    assert third.exit_code == 1
    assert "kek_mismatch" in third.output


def test_a_replica_listening_on_every_address_advertises_its_public_url(
    tmp_path: Path, pg_url: str
) -> None:
    """`--listen 0.0.0.0:8443 --advertise https://ctl-b.example:8443`: tokens and identity
    files name the advertised URL, and the server certificate covers its host."""
    clock = FakeClock()
    _, admin = init_home(tmp_path / "a", clock(), db_url=pg_url, kek=KEK)
    join_home(
        tmp_path / "b", clock(), db_url=pg_url, kek=KEK, address="0.0.0.0:8443",
        advertise="https://ctl-b.example:8443/",
    )  # fmt: skip
    b = load_home(tmp_path / "b", kek=KEK)
    try:
        assert b.config.url == "https://ctl-b.example:8443"
        assert b.authority.controller_url == "https://ctl-b.example:8443"
        app_b = create_app(b.db, b.authority, clock=clock)
        body = {"name": "carol", "kind": "device"}
        token = _client(app_b, admin).post("/v1/identities", json=body).json()["enrollment_token"]
        assert read_enrollment_token_unverified(token).controller_url == b.config.url
        cert = x509.load_pem_x509_certificate(b.home.server_pem.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "ctl-b.example" in names.get_values_for_type(x509.DNSName)
    finally:
        b.db.dispose()


@pytest.mark.parametrize("url", ["http://x:1", "https://", "https://x/path", "x:8443"])
def test_bad_advertised_urls_are_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(HomeError) as refused:
        init_home(tmp_path / "a", datetime.now(UTC), advertise=url)
    assert refused.value.code == "invalid_address"
    assert not (tmp_path / "a" / "controller").exists()
