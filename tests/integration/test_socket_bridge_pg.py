"""A real database driver through the overlay, unchanged: pg8000 talks to a real PostgreSQL
over `stream.as_socket()`. The database listens on a Unix socket only (no TCP port at all);
the hosting side relays each stream to it, as `umbra host` does for TCP."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import context, running_router
from umbranet.sdk.forward import relay

pg8000 = pytest.importorskip("pg8000.native", reason="pg8000 is not installed")

INITDB = shutil.which("initdb") or "/usr/lib/postgresql/15/bin/initdb"
POSTGRES = shutil.which("postgres") or "/usr/lib/postgresql/15/bin/postgres"


def _as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv]


@pytest.fixture
def postgres_socket() -> Iterator[Path]:
    """A throwaway PostgreSQL cluster listening on a Unix socket only; yields the socket."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run PostgreSQL as the postgres user")
    if not (os.path.exists(INITDB) and os.path.exists(POSTGRES) and shutil.which("runuser")):
        pytest.skip("PostgreSQL (initdb, postgres) or runuser is not installed")
    root = Path(tempfile.mkdtemp(prefix="umbra-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    subprocess.run(
        _as_postgres(INITDB, "-D", str(data), "-A", "trust", "-U", "umbra", "--no-sync"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = subprocess.Popen(
        _as_postgres(
            POSTGRES, "-D", str(data), "-k", str(root), "-c", "listen_addresses=", "-c", "fsync=off"
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    socket_path = root / ".s.PGSQL.5432"
    try:
        deadline = time.monotonic() + 60
        while not socket_path.exists():
            assert server.poll() is None, "postgres exited at start"
            assert time.monotonic() < deadline, "postgres did not start in 60 s"
            time.sleep(0.1)
        yield socket_path
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def _queries(sock: Any) -> list[Any]:
    connection = pg8000.Connection(user="umbra", database="postgres", sock=sock)
    try:
        connection.run("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
        connection.run("INSERT INTO notes (body) VALUES (:a), (:b)", a="dark", b="[db-hosts]")
        rows = connection.run("SELECT body FROM notes ORDER BY id")
        user = connection.run("SELECT current_user")
        return [rows, user]
    finally:
        connection.close()


def test_pg8000_runs_queries_through_the_overlay(network, arun, postgres_socket: Path) -> None:
    network.service("pg", dial=("client",), bind=("server",))

    async def main() -> list[Any]:
        async with running_router(network):
            host = context(network, "db-host", "server")
            client = context(network, "app", "client")
            async with host, client:
                listener = await host.listen("pg").start()

                async def host_streams() -> None:
                    async for stream in listener:
                        reader, writer = await asyncio.open_unix_connection(str(postgres_socket))
                        asyncio.get_running_loop().create_task(relay(stream, reader, writer))

                hosting = asyncio.get_running_loop().create_task(host_streams())
                stream = await client.dial("pg")
                result = await asyncio.to_thread(_queries, stream.as_socket())
                hosting.cancel()
                await listener.close()
                return result

    rows, user = arun(main())
    assert rows == [["dark"], ["[db-hosts]"]]
    assert user == [["umbra"]]
