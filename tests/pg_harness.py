"""A throwaway PostgreSQL cluster for the tests: one per session, a fresh database per test.

Debian's ``postgresql`` package puts ``initdb`` and ``pg_ctl`` under
``/usr/lib/postgresql/<version>/bin``. PostgreSQL refuses to run as root, so as root the
cluster is made and run as the ``postgres`` user (``runuser``); as any other user it runs as
that user. It listens on a free port on 127.0.0.1 only, with ``trust`` authentication (the
port is loopback-only and the cluster lives for one session), and ``fsync=off`` (nothing in it
must survive a crash). Tests that ask for PostgreSQL are skipped, with the reason, only where
no cluster can be started.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

__all__ = ["PgCluster", "db_url", "pg_cluster", "pg_url"]

_BIN_DIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15)]


@dataclass
class PgCluster:
    """A running cluster; `url` names a database in it (``postgresql+psycopg://``)."""

    port: int
    data: Path
    bin: Path
    user: str | None  # the OS user to run commands as (None: ourselves)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=60, check=check
        )


def _find_bin() -> Path | None:
    for directory in _BIN_DIRS:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def start_cluster() -> tuple[PgCluster | None, str, Path | None]:
    """(cluster, "", tempdir) or (None, why not, tempdir to remove)."""
    bin_dir = _find_bin()
    if bin_dir is None:
        return None, "PostgreSQL is not installed (no initdb or pg_ctl)", None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, "psycopg is not installed (pip install 'psycopg[binary]')", None
    user: str | None = None
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no 'postgres' user to run PostgreSQL", None
        if shutil.which("runuser") is None:
            return None, "running as root and runuser is missing", None
        user = entry.pw_name
    tmp = Path(tempfile.mkdtemp(prefix="umbra-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(tmp, entry.pw_uid, entry.pw_gid)
    data = tmp / "data"
    cluster = PgCluster(free_port(), data, bin_dir, user)
    init = cluster.run(
        str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
        check=False,
    )  # fmt: skip
    if init.returncode != 0:
        return None, f"initdb failed: {init.stderr.strip()[-300:]}", tmp
    options = (
        f"-p {cluster.port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    start = cluster.run(
        str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-o", options,
        "-w", "-t", "30", "start", check=False,
    )  # fmt: skip
    if start.returncode != 0:
        log = (tmp / "log").read_text(errors="replace")[-300:] if (tmp / "log").exists() else ""
        return None, f"pg_ctl start failed: {start.stderr.strip()[-200:]} {log}", tmp
    return cluster, "", tmp


def stop_cluster(cluster: PgCluster) -> None:
    cluster.run(
        str(cluster.bin / "pg_ctl"), "-D", str(cluster.data), "-m", "immediate", "-w", "stop",
        check=False,
    )  # fmt: skip


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The session's cluster (started on first use), or a skip saying why there is none."""
    cluster, why, tmp = start_cluster()
    try:
        if cluster is None:
            pytest.skip(f"PostgreSQL cannot run here: {why}")
        yield cluster
    finally:
        if cluster is not None:
            stop_cluster(cluster)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database in the session's cluster, dropped afterwards."""
    name = pg_cluster.create_database()
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each engine the controller supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'umbra.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url
