"""The audit log's hash chain: appends chain, `verify` names the first edited, deleted or
inserted row, concurrent appends (replicas on PostgreSQL) never fork the chain, and the
migration chains rows written before it. Runs on SQLite and PostgreSQL (`db_url`)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from umbranet.cli.main import app
from umbranet.controller.store import Database, Store, make_engine, migrate
from umbranet.controller.store.models import AuditEvent

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _append(db: Database, count: int, actor: str = "admin") -> None:
    for i in range(count):
        with db.session() as session:
            Store(session).audit(
                NOW + timedelta(seconds=i), actor, "identity.create", f"id{i}", {"n": i, "a": [1]}
            )


def _verify(db: Database) -> tuple[bool, int | None, str]:
    with db.session() as session:
        verdict = Store(session).verify_audit_chain()
    return verdict.ok, verdict.broken_at, verdict.reason


def _ids(db: Database) -> list[int]:
    with db.session() as session:
        return list(session.scalars(sa.select(AuditEvent.id).order_by(AuditEvent.id)))


def test_an_untouched_chain_verifies(db_url: str) -> None:
    db = Database.open(db_url)
    assert _verify(db) == (True, None, "")
    _append(db, 5)
    assert _verify(db)[0]


def test_editing_a_row_names_it(db_url: str) -> None:
    db = Database.open(db_url)
    _append(db, 5)
    third = _ids(db)[2]
    with db.engine.begin() as connection:
        connection.execute(
            sa.update(AuditEvent).where(AuditEvent.id == third).values(actor="someone else")
        )
    ok, broken_at, reason = _verify(db)
    assert not ok
    assert broken_at == third
    assert "does not match its fields" in reason


def test_editing_a_row_and_its_hash_names_the_next_row(db_url: str) -> None:
    db = Database.open(db_url)
    _append(db, 5)
    ids = _ids(db)
    with db.engine.begin() as connection:
        connection.execute(
            sa.update(AuditEvent).where(AuditEvent.id == ids[1]).values(row_hash="f" * 64)
        )
    ok, broken_at, _reason = _verify(db)
    assert not ok
    assert broken_at in (ids[1], ids[2])


def test_deleting_a_row_names_the_row_after_it(db_url: str) -> None:
    db = Database.open(db_url)
    _append(db, 5)
    ids = _ids(db)
    with db.engine.begin() as connection:
        connection.execute(sa.delete(AuditEvent).where(AuditEvent.id == ids[2]))
    ok, broken_at, reason = _verify(db)
    assert not ok
    assert broken_at == ids[3]
    assert "prev_hash" in reason


def test_deleting_the_newest_rows_is_caught_by_the_head(db_url: str) -> None:
    db = Database.open(db_url)
    _append(db, 5)
    ids = _ids(db)
    with db.engine.begin() as connection:
        connection.execute(sa.delete(AuditEvent).where(AuditEvent.id >= ids[3]))
    ok, broken_at, reason = _verify(db)
    assert not ok
    assert broken_at is None
    assert "newest rows were deleted" in reason


def test_a_row_inserted_outside_the_chain_is_named(db_url: str) -> None:
    db = Database.open(db_url)
    _append(db, 2)
    with db.session() as session:
        session.add(AuditEvent(at=NOW, actor="x", action="y", target="z", detail={}))
    ok, broken_at, _reason = _verify(db)
    assert not ok
    assert broken_at == _ids(db)[-1]


def test_concurrent_appends_do_not_fork_the_chain(db_url: str) -> None:
    db = Database.open(db_url)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            _append(db, 15, actor=name)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(_ids(db)) == 60
    assert _verify(db) == (True, None, "")


def test_the_migration_chains_rows_written_before_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    migrate(engine, "0007")
    with engine.begin() as connection:  # more than the migration's page of 1,000 rows
        connection.execute(
            sa.text(
                "INSERT INTO audit_events (at, actor, action, target, detail) "
                "VALUES (:at, 'admin', 'identity.create', :t, '{}')"
            ),
            [{"at": NOW + timedelta(seconds=i), "t": f"old{i}"} for i in range(1003)],
        )
    migrate(engine)
    db = Database(engine)
    assert _verify(db) == (True, None, "")
    assert len(_ids(db)) == 1003
    _append(db, 2)
    assert _verify(db) == (True, None, "")


def test_the_cli_names_the_broken_row(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'umbra.db'}"
    db = Database.open(url)
    _append(db, 3)
    runner = CliRunner()
    good = runner.invoke(app, ["--json", "audit", "verify", "--db", url])
    assert good.exit_code == 0, good.output
    assert '"ok": true' in good.output
    second = _ids(db)[1]
    with db.engine.begin() as connection:
        connection.execute(
            sa.update(AuditEvent).where(AuditEvent.id == second).values(target="edited")
        )
    bad = runner.invoke(app, ["--json", "audit", "verify", "--db", url])
    assert bad.exit_code == 1
    assert "audit_chain_broken" in bad.output
    assert f"row {second}" in bad.output
