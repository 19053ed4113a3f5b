"""`umbra controller rotate` for homes whose keys are sealed in the database: the ticket key
and the CA rotate in the shared database, every replica (`join`) loads the same new keys,
old tickets verify during the overlap, and a wrong KEK changes nothing. Runs on SQLite and
PostgreSQL (`db_url`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from umbranet.cli.main import app
from umbranet.controller.home import init_home, load_home
from umbranet.controller.replica import join_home
from umbranet.controller.secrets import KeyEncryptionKey
from umbranet.controller.store.cluster_models import ControllerSecret
from umbranet.pki import verify_ticket
from umbranet.pki.bundle import certificate_fingerprint
from umbranet.pki.tickets import Action

runner = CliRunner()


def _kek_file(path: Path) -> tuple[KeyEncryptionKey, Path]:
    kek, text = KeyEncryptionKey.generate()
    path.write_text(text)
    return kek, path


def _rotate(home: Path, kek: Path, *args: str) -> dict[str, object]:
    result = runner.invoke(
        app, ["--home", str(home), "--json", "controller", "rotate", *args, "--kek-file", str(kek)]
    )
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.output)
    return data


def test_replicas_share_rotated_keys_from_the_database(tmp_path: Path, db_url: str) -> None:
    now = datetime.now(UTC)
    kek, kek_path = _kek_file(tmp_path / "kek")
    home_a, admin = init_home(tmp_path / "a", now, db_url=db_url, kek=kek)
    join_home(tmp_path / "b", now, db_url=db_url, kek=kek, address="127.0.0.1:8444")
    first = load_home(home_a.root, kek=kek)
    old_key = first.authority.signer.key_id
    old_ca = certificate_fingerprint(first.authority.ca.certificate)
    old_ticket = first.authority.signer.sign_ticket(admin.spiffe_id, "db", Action.DIAL, now)[1]
    first.db.dispose()

    rotated = _rotate(home_a.root, kek_path, "ticket-key", "--overlap-hours", "1")
    loaded = [load_home(tmp_path / name, kek=kek) for name in ("a", "b")]
    try:
        for replica in loaded:
            authority = replica.authority
            assert authority.signer.key_id == rotated["id"] != old_key
            assert [s.key_id for s in authority.retired_signers] == [old_key]
            assert authority.bundle.version == 1
            verify_ticket(old_ticket, authority.bundle, now)  # the overlap
    finally:
        for replica in loaded:
            replica.db.dispose()

    # A CA rotation with no overlap: the next start (of any replica) makes it the issuer.
    announced = _rotate(home_a.root, kek_path, "ca", "--overlap-hours", "0")
    loaded = [load_home(tmp_path / name, kek=kek) for name in ("b", "a")]
    try:
        for replica in loaded:
            ca = replica.authority.ca.certificate
            assert certificate_fingerprint(ca) == announced["id"] != old_ca
            trusted = {certificate_fingerprint(c) for c in replica.authority.bundle.ca_certificates}
            assert old_ca in trusted  # kept until what it issued has expired
    finally:
        for replica in loaded:
            replica.db.dispose()


def test_a_wrong_kek_rotates_nothing(tmp_path: Path, db_url: str) -> None:
    now = datetime.now(UTC)
    kek, _ = _kek_file(tmp_path / "kek")
    home, _admin = init_home(tmp_path / "a", now, db_url=db_url, kek=kek)
    _other, wrong = _kek_file(tmp_path / "wrong")
    loaded = load_home(home.root, kek=kek)
    try:
        with loaded.db.session() as session:
            before = {r.name: r.sealed for r in session.scalars(sa.select(ControllerSecret))}
    finally:
        loaded.db.dispose()
    result = runner.invoke(
        app,
        ["--home", str(home.root), "--json", "controller", "rotate", "ticket-key",
         "--kek-file", str(wrong)],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "kek_mismatch" in result.output
    loaded = load_home(home.root, kek=kek)
    try:
        with loaded.db.session() as session:
            after = {r.name: r.sealed for r in session.scalars(sa.select(ControllerSecret))}
    finally:
        loaded.db.dispose()
    assert after == before
