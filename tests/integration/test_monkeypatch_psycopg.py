"""psycopg 3 (libpq, which connects in C), unmodified and given only a host name, reaches a
real PostgreSQL through the overlay with ``monkeypatch(..., native=True)``; the database has no
TCP port at all. Without ``native`` the placeholder is refused on this host (nothing leaves it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import running_router
from tests.integration.test_socket_bridge_pg import postgres_socket  # noqa: F401 (fixture)
from tests.integration.unix_hosting import hosted_on_unix_socket
from umbranet.integrations import monkeypatch as mp
from umbranet.sdk.blocking import BlockingContext
from umbranet.testing import LocalNetwork

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")


def _with_pg_hosted(
    network: LocalNetwork, arun: Any, unix_socket: Path, client_side: Callable[[], Any]
) -> Any:
    network.service("pg", dial=("client",), bind=("server",))
    return hosted_on_unix_socket(network, arun, "pg", unix_socket, client_side)


def test_psycopg_by_name_and_by_pair(
    network: LocalNetwork,
    arun: Any,
    tmp_path: Path,
    postgres_socket: Path,  # noqa: F811
) -> None:
    path = tmp_path / "app.json"
    network.identity("app", attributes=("client",)).save(path)

    async def async_app() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(
            host="pg.umbra", port=5432, user="umbra", dbname="postgres", connect_timeout=10
        ) as db:
            cursor = await db.execute("SELECT 'async', 6 * 7")
            return list(await cursor.fetchall())

    def client_side() -> list[Any]:
        with (
            BlockingContext(path, control=network.control, renew=False) as ctx,
            mp.patched(ctx, dial={"db.internal:5432": "pg"}, native=True),
        ):
            rows = []
            for host in ("pg.umbra", "db.internal"):
                with psycopg.connect(
                    host=host, port=5432, user="umbra", dbname="postgres", connect_timeout=10
                ) as db:
                    rows += db.execute("SELECT current_user, 40 + 2").fetchall()
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as run:
                rows += run.run(async_app())
            rows.append(mp.statistics()["dialed_native"])
            return rows

    assert _with_pg_hosted(network, arun, postgres_socket, client_side) == [
        ("umbra", 42),
        ("umbra", 42),
        ("async", 42),
        3,
    ]


def test_psycopg_without_native_is_refused_on_this_host(
    network: LocalNetwork, arun: Any, tmp_path: Path
) -> None:
    """libpq connects to the loopback placeholder, where nothing listens: refused locally."""
    path = tmp_path / "app.json"
    network.identity("app", attributes=("client",)).save(path)

    def client_side() -> str:
        with (
            BlockingContext(path, control=network.control, renew=False) as ctx,
            mp.patched(ctx),
        ):
            with pytest.raises(psycopg.OperationalError) as refused:
                psycopg.connect(host="pg.umbra", user="umbra", connect_timeout=5)
            return str(refused.value)

    async def main() -> str:
        async with running_router(network):
            return await asyncio.to_thread(client_side)

    message = arun(main())
    assert "127.85.0.1" in message and "refused" in message
