"""The controller store: migrations, portable schema, SQLite pragmas, single-use tokens.

Tests taking `db_url` run on SQLite and on a throwaway PostgreSQL (tests/pg_harness.py).
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from umbranet.controller.store import (
    HEAD_REVISION,
    Base,
    Conflict,
    Database,
    Enrollment,
    Identity,
    Store,
    make_engine,
    migrate,
)
from umbranet.home_layout import HomeError

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _db(db_url: str) -> Database:
    return Database.open(db_url)


def _identity(name: str = "alice") -> Identity:
    return Identity(
        name=name,
        kind="device",
        spiffe_id=f"spiffe://demo.umbra/device/{name}",
        attributes=["eng"],
        enabled=True,
        created_at=NOW,
    )


def test_migrations_create_the_schema_the_models_describe(db_url: str) -> None:
    db = _db(db_url)
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    assert diff == []
    assert version == HEAD_REVISION
    db.dispose()


def test_migrate_is_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)
    assert set(sa.inspect(engine).get_table_names()) >= {
        "identities",
        "enrollments",
        "services",
        "routers",
        "audit_events",
    }
    engine.dispose()


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path: Path) -> None:
    db = _db(f"sqlite:///{tmp_path / 'umbra.db'}")
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with pytest.raises(sa.exc.IntegrityError), db.session() as session:
        session.add(Enrollment(token_id="t", identity_id=999, expires_at=NOW, created_at=NOW))
        session.flush()
    db.dispose()


def test_migration_ddl_is_portable_to_postgresql() -> None:
    """The initial revision renders for PostgreSQL with no SQLite-only types."""
    buffer = io.StringIO()
    config = Config(output_buffer=buffer)
    location = resources.files("umbranet.controller.store") / "migrations"
    config.set_main_option("script_location", str(location))
    config.set_main_option("sqlalchemy.url", "postgresql://u@localhost/umbra")
    command.upgrade(config, "head", sql=True)
    ddl = buffer.getvalue()
    assert "CREATE TABLE identities" in ddl
    assert "TIMESTAMP WITH TIME ZONE" in ddl
    assert "JSON" in ddl


def test_times_come_back_timezone_aware(db_url: str) -> None:
    db = _db(db_url)
    with db.session() as session:
        Store(session).add(_identity())
    with db.session() as session:
        row = Store(session).identity_by_name("alice")
        assert row is not None
        assert row.created_at == NOW
        assert row.created_at.tzinfo is not None
    db.dispose()


def test_naive_datetimes_are_refused(db_url: str) -> None:
    db = _db(db_url)
    row = _identity()
    row.created_at = datetime(2030, 1, 1)  # naive on purpose
    with pytest.raises(sa.exc.StatementError), db.session() as session:
        Store(session).add(row)
    db.dispose()


def test_duplicate_names_are_a_conflict(db_url: str) -> None:
    db = _db(db_url)
    with db.session() as session:
        store = Store(session)
        store.add(_identity())
        with pytest.raises(Conflict):
            duplicate = _identity()
            duplicate.spiffe_id = "spiffe://demo.umbra/workload/alice"
            store.add(duplicate)
        # The savepoint rolled back only the duplicate; the session is still usable.
        store.add(_identity("bob"))
    with db.session() as session:
        assert [i.name for i in Store(session).identities()] == ["alice", "bob"]
    db.dispose()


def test_an_enrollment_can_be_consumed_once(db_url: str) -> None:
    db = _db(db_url)
    with db.session() as session:
        store = Store(session)
        identity = _identity()
        store.add(identity)
        store.add(
            Enrollment(
                token_id="jti-1",
                identity_id=identity.id,
                expires_at=NOW + timedelta(hours=1),
                created_at=NOW,
            )
        )
    with db.session() as session:
        assert Store(session).consume_enrollment("jti-1", NOW)
    with db.session() as session:
        assert not Store(session).consume_enrollment("jti-1", NOW)
        assert not Store(session).consume_enrollment("missing", NOW)
        enrollment = Store(session).enrollment("jti-1")
        assert enrollment is not None and enrollment.used_at == NOW
    db.dispose()


def test_a_schema_newer_than_the_code_is_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(HomeError) as refused:
        migrate(engine)
    assert refused.value.code == "schema_too_new"
    assert "9999" in refused.value.message
    engine.dispose()


def test_migrate_dry_run_lists_and_changes_nothing_then_migrate_applies(
    db_url: str, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from umbranet.cli.main import app

    engine = make_engine(db_url)
    migrate(engine, "0004")
    runner = CliRunner()
    base = ["--home", str(tmp_path / "none"), "--json", "controller", "migrate", "--db", db_url]
    dry = runner.invoke(app, [*base, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    listed = json.loads(dry.output)
    assert listed["current"] == "0004"
    pending = [p["revision"] for p in listed["pending"]]
    assert pending[0] == "0005" and pending[-1] == HEAD_REVISION and pending == sorted(pending)
    assert not listed["applied"]
    with engine.connect() as connection:
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    assert version == "0004"
    applied = runner.invoke(app, base)
    assert applied.exit_code == 0, applied.output
    assert json.loads(applied.output)["applied"]
    with engine.connect() as connection:
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    assert version == HEAD_REVISION
    engine.dispose()


def test_a_long_read_only_transaction_does_not_hold_sqlite_writers(tmp_path: Path) -> None:
    """The posture ticker scans every identity once a minute: at 100,000 identities that
    takes seconds, and as an ordinary (BEGIN IMMEDIATE) transaction it held SQLite's write
    lock so long that enrollments and tickets failed 'database is locked' (503). Read-only,
    it reads a snapshot beside the writer."""
    import threading

    db = _db(f"sqlite:///{tmp_path / 'read.db'}")
    with db.session() as session:
        Store(session).add(_identity("before"))
    written = threading.Event()

    def writer() -> None:
        with db.session() as session:
            Store(session).add(_identity("during"))
        written.set()

    with db.session(read_only=True) as reading:
        seen = reading.scalars(sa.select(Identity.name)).all()
        thread = threading.Thread(target=writer)
        thread.start()
        assert written.wait(timeout=30), "the writer waited for the reader"
        thread.join()
        # The reader's snapshot does not move under it.
        assert reading.scalars(sa.select(Identity.name)).all() == seen == ["before"]
    with db.session() as session:
        assert sorted(session.scalars(sa.select(Identity.name)).all()) == ["before", "during"]
