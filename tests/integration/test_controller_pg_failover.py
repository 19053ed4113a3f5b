"""PostgreSQL itself fails over: a streaming-replication standby (`pg_basebackup -R`) is
promoted after the primary dies, and a running controller, connected through a multi-host
URL with ``target_session_attrs=read-write``, keeps serving without a restart.

The time from the primary's death to the first successful write through the API is printed
(not asserted: it includes how long this test takes to promote).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import free_port
from tests.controller_harness import Harness, make_harness
from tests.pg_harness import PgCluster, start_cluster, stop_cluster

pytestmark = pytest.mark.slow


@pytest.fixture
def primary_and_standby() -> Iterator[tuple[PgCluster, PgCluster]]:
    primary, why, tmp = start_cluster()
    standby: PgCluster | None = None
    try:
        if primary is None:
            pytest.skip(f"PostgreSQL cannot run here: {why}")
        assert tmp is not None
        standby = PgCluster(free_port(), tmp / "standby", primary.bin, primary.user)
        copy = primary.run(
            str(primary.bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port),
            "-U", "postgres", "-D", str(standby.data), "-R", "-X", "stream", check=False,
        )  # fmt: skip
        if copy.returncode != 0:
            pytest.skip(f"pg_basebackup failed: {copy.stderr.strip()[-300:]}")
        options = (
            f"-p {standby.port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        started = standby.run(
            str(standby.bin / "pg_ctl"), "-D", str(standby.data), "-l", str(tmp / "standby.log"),
            "-o", options, "-w", "-t", "30", "start", check=False,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        yield primary, standby
    finally:
        for cluster in (standby, primary):
            if cluster is not None:
                stop_cluster(cluster)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _wait_replayed(primary: PgCluster, standby: PgCluster) -> None:
    import psycopg

    with psycopg.connect(primary.url().replace("+psycopg", ""), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        target = row[0]
    deadline = time.monotonic() + 30
    with psycopg.connect(standby.url().replace("+psycopg", ""), autocommit=True) as conn:
        while time.monotonic() < deadline:
            caught = conn.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
            ).fetchone()
            if caught and caught[0]:
                return
            time.sleep(0.05)
    raise AssertionError("the standby did not catch up with the primary")


def _create(client: TestClient, name: str) -> int:
    return client.post("/v1/identities", json={"name": name, "kind": "device"}).status_code


def test_the_controller_keeps_serving_when_the_standby_is_promoted(
    tmp_path: Path, primary_and_standby: tuple[PgCluster, PgCluster]
) -> None:
    primary, standby = primary_and_standby
    name = primary.create_database()  # replicated to the standby
    url = (
        f"postgresql+psycopg://postgres@/{name}?host=127.0.0.1:{primary.port}"
        f"&host=127.0.0.1:{standby.port}&target_session_attrs=read-write"
    )
    harness = make_harness(tmp_path, url)
    h: Harness = next(harness)
    try:
        h.app.state.umbra.start_cluster(poll=1.0)
        listener = h.app.state.umbra.listener
        assert listener.connected.wait(10)
        admin = h.client(h.admin)
        assert _create(admin, "before") == 201
        # Streaming replication is asynchronous: wait until the standby replayed everything,
        # or the primary's last commits die with it (synchronous_standby_names avoids that).
        _wait_replayed(primary, standby)

        died = time.monotonic()
        stop_cluster(primary)  # immediate: as if the machine died
        # While no primary exists, writes are refused as unavailable (clients retry).
        assert _create(admin, "during") == 503
        promoted = standby.run(str(standby.bin / "pg_ctl"), "-D", str(standby.data), "promote")
        assert promoted.returncode == 0, promoted.stderr

        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline:
            status = _create(admin, "after")
            if status == 201:
                break
            time.sleep(0.05)
        recovered = time.monotonic() - died
        assert status == 201
        print(f"\nprimary killed -> standby promoted -> first write after {recovered:.2f} s")
        names = {i["name"] for i in admin.get("/v1/identities").json()}
        assert {"admin", "before", "after"} <= names

        # The epoch listener followed to the new primary: a bump reaches subscribers.
        async def bump_is_heard() -> None:
            queue = h.app.state.umbra.events.subscribe()
            try:
                assert admin.post("/v1/identities/after/disable").status_code == 200
                event = await asyncio.wait_for(queue.get(), 10)
                assert event.reason == "identity after disabled"
            finally:
                h.app.state.umbra.events.unsubscribe(queue)

        asyncio.run(bump_is_heard())
        deadline = time.monotonic() + 10
        while not listener.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listener.connected.is_set() and listener.reconnects >= 1
    finally:
        h.app.state.umbra.stop_cluster()
        harness.close()
