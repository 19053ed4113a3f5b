"""The socket patch sends only configured or ``.umbra`` names to the overlay; unpatch restores."""

from __future__ import annotations

import socket
from typing import Any

from umbranet.integrations import monkeypatch as mp


def test_targets_configured_pairs_and_umbra_names_only() -> None:
    dial = {"db.internal:5432": "postgres-svc"}
    assert mp.target_of("db.internal", 5432, dial) == "postgres-svc"
    assert mp.target_of("db.internal", 5433, dial) is None
    assert mp.target_of("web.umbra", 80, dial) == "web"
    assert mp.target_of(".umbra", 80, dial) is None
    assert mp.target_of("example.org", 443, dial) is None


def test_unpatch_restores_and_unmatched_names_use_the_network_path() -> None:
    before = socket.create_connection
    calls: list[Any] = []

    class Ctx:
        def call(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            raise AssertionError("an unmatched address must not be dialed")

    mp.monkeypatch(Ctx(), dial={"db.internal:5432": "pg"})  # type: ignore[arg-type]
    try:
        assert socket.create_connection is not before
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        server.close()
    finally:
        mp.unpatch()
    assert socket.create_connection is before
    assert calls == []
