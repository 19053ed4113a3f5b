"""Engines, sessions and schema migrations for the controller store.

SQLite is the embedded default; PostgreSQL (psycopg 3) serves several controller replicas
sharing one database (docs/ha.md). On SQLite every connection gets WAL (a reader never sees a
half-written transaction and the file survives crashes), foreign keys (off by default in
SQLite) and a busy timeout; transactions begin IMMEDIATE, so concurrent writers queue instead
of failing.
Migrations run programmatically through Alembic with a `Config` built in code, and the scripts
are found as package resources, so they work from an installed wheel.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.orm import Session, sessionmaker

from umbranet.home_layout import HomeError

__all__ = [
    "HEAD_REVISION",
    "Database",
    "is_postgresql",
    "make_engine",
    "migrate",
    "pending_migrations",
    "normalise_url",
]

HEAD_REVISION = "0012"
_MIGRATE_LOCK = 0x756D6272_61000001
"""The PostgreSQL advisory lock key held while migrating ("umbra" in ASCII, then a number)."""


def normalise_url(db_url: str) -> sa.URL:
    """`db_url` parsed; plain ``postgresql://`` (and ``postgres://``) mean psycopg 3, the one
    PostgreSQL driver the controller extra installs (SQLAlchemy's default is psycopg2)."""
    url = sa.make_url(db_url.replace("postgres://", "postgresql://", 1))
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


def is_postgresql(engine: sa.Engine) -> bool:
    return engine.dialect.name == "postgresql"


def make_engine(db_url: str) -> sa.Engine:
    """An engine for `db_url`; SQLite connections get the pragmas the controller relies on."""
    url = normalise_url(db_url)
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        # Requests run in a thread pool; each session checks out its own connection.
        kwargs["connect_args"] = {"check_same_thread": False}
    elif url.get_backend_name() == "postgresql":
        # Connections broken by a database restart or failover are found at checkout and
        # replaced, not handed to a request; requests run in a thread pool of 40.
        kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=30)
    engine = sa.create_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin: the module's
    # own implicit BEGIN breaks SAVEPOINTs (which `Store.add` uses to report conflicts).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


READ_ONLY = "umbranet_read_only"
"""The execution option of `Database.session(read_only=True)`."""


def _sqlite_begin(connection: sa.Connection) -> None:
    # IMMEDIATE takes the write lock up front, so a transaction that reads and then writes
    # waits its turn (busy_timeout) instead of failing when another writer got there first.
    # A read-only one must not: in WAL mode a plain BEGIN reads a snapshot beside the one
    # writer, so a long scan (posture over every identity) never stalls writers past their
    # busy_timeout.
    if connection.get_execution_options().get(READ_ONLY):
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _config(engine: sa.Engine) -> Config:
    config = Config()
    location = resources.files("umbranet.controller.store") / "migrations"
    config.set_main_option("script_location", str(location))
    # configparser interpolates '%': percent-encoded URLs (passwords, multi-host) need '%%'.
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    config.set_main_option("sqlalchemy.url", url)
    return config


def pending_migrations(engine: sa.Engine) -> tuple[str | None, list[tuple[str, str]]]:
    """The schema's current revision (None: empty database) and the (revision, summary) of
    each migration `migrate` would apply, oldest first; reads only."""
    scripts = ScriptDirectory.from_config(_config(engine))
    with engine.connect() as connection:
        _refuse_unknown_revisions(connection, scripts)
        heads = MigrationContext.configure(connection).get_current_heads()
    current = heads[0] if heads else None
    steps = list(scripts.iterate_revisions("heads", current or "base"))
    steps.reverse()
    summary = [(s.revision, (s.doc or "").strip().splitlines()[0] if s.doc else "") for s in steps]
    return current, summary


def migrate(engine: sa.Engine, revision: str = "head") -> None:
    """Upgrade the schema behind `engine` to `revision` (idempotent)."""
    config = _config(engine)
    with engine.begin() as connection:
        if is_postgresql(engine):
            # Replicas starting together migrate one at a time (the lock ends with the
            # transaction); the second finds the schema current and does nothing.
            lock = sa.text("SELECT pg_advisory_xact_lock(:key)")
            connection.execute(lock, {"key": _MIGRATE_LOCK})
        _refuse_unknown_revisions(connection, ScriptDirectory.from_config(config))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _refuse_unknown_revisions(connection: sa.Connection, scripts: ScriptDirectory) -> None:
    """A schema migrated by a newer version (a replica upgraded first, or a rollback of the
    code) is refused with a clear error: this code would misread it, and cannot migrate it."""
    current = MigrationContext.configure(connection).get_current_heads()
    known = {script.revision for script in scripts.walk_revisions()}
    unknown = sorted(r for r in current if r not in known)
    if unknown:
        raise HomeError(
            "schema_too_new",
            f"the database schema is at revision {', '.join(unknown)}, newer than this "
            f"version knows (up to {HEAD_REVISION}); upgrade umbranet on this machine",
        )


class Database:
    """An engine plus a session factory: the one handle the controller passes around."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, db_url: str, *, migrate_schema: bool = True) -> Database:
        engine = make_engine(db_url)
        if migrate_schema:
            migrate(engine)
        return cls(engine)

    @contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any exception.

        `read_only`: the transaction only reads (on SQLite it then takes no write lock; a
        write inside it would fail with "database is locked" when another writer is busy)."""
        with self._sessions() as session, session.begin():
            if read_only:
                session.connection(execution_options={READ_ONLY: True})
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
