"""pg8000, unmodified and given only a host name, reaches a real PostgreSQL through the
overlay once ``socket.create_connection`` is patched (the database has no TCP port at all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_socket_bridge_pg import postgres_socket  # noqa: F401 (fixture)
from tests.integration.unix_hosting import hosted_on_unix_socket
from umbranet.integrations.monkeypatch import monkeypatch, unpatch
from umbranet.sdk.blocking import BlockingContext

pg8000 = pytest.importorskip("pg8000.native", reason="pg8000 is not installed")


def test_pg8000_by_configured_host_port(
    network,
    arun,
    tmp_path: Path,
    postgres_socket: Path,  # noqa: F811
) -> None:
    network.service("pg", dial=("client",), bind=("server",))
    path = tmp_path / "app.json"
    network.identity("app", attributes=("client",)).save(path)

    def client_side() -> list[Any]:
        with BlockingContext(path, control=network.control, renew=False) as ctx:
            monkeypatch(ctx, dial={"db.internal:5432": "pg"})
            try:
                db = pg8000.Connection(user="umbra", host="db.internal", database="postgres")
                try:
                    return list(db.run("SELECT current_user, 40 + 2"))
                finally:
                    db.close()
            finally:
                unpatch()

    assert hosted_on_unix_socket(network, arun, "pg", postgres_socket, client_side) == [
        ["umbra", 42]
    ]
