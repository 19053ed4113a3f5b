"""Resuming the event stream on another replica: `hello` carries the stored epoch, shared by
every replica, even when the replica answering has not heard of the newest bump (its
listener was away, or, as here on SQLite, there is no listener at all), and the replica
list. A client that saw an older epoch therefore knows it missed events (docs/ha.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from tests.controller_harness import cert_der
from umbranet.controller.api import create_app
from umbranet.controller.home import init_home, load_home
from umbranet.controller.replicas import ReplicaDirectory
from umbranet.controller.server import TlsScopeApp
from umbranet.pki import IdentityFile
from umbranet.testing.clock import FakeClock


async def _hello(app: FastAPI, identity: IdentityFile) -> dict[str, Any]:
    """The first event of ``GET /v1/events`` (the stream is then dropped)."""
    scope = {
        "type": "http", "method": "GET", "path": "/v1/events", "raw_path": b"/v1/events",
        "query_string": b"", "headers": [(b"host", b"testserver")], "scheme": "https",
        "server": ("testserver", 443), "client": ("127.0.0.1", 1), "http_version": "1.1",
        "root_path": "", "extensions": {},
    }  # fmt: skip
    first: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body") and not first.done():
            first.set_result(message["body"])

    task = asyncio.ensure_future(TlsScopeApp(app, cert_der(identity))(scope, receive, send))
    try:
        body = (await asyncio.wait_for(first, 10)).decode()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    name, data = (line.split(": ", 1)[1] for line in body.strip().splitlines())
    assert name == "hello"
    result: dict[str, Any] = json.loads(data)
    return result


def test_hello_on_a_replica_that_missed_a_bump_carries_the_stored_epoch(tmp_path: Path) -> None:
    clock = FakeClock()
    _, admin = init_home(tmp_path / "home", clock())
    a, b = load_home(tmp_path / "home"), load_home(tmp_path / "home")
    try:
        app_a = create_app(a.db, a.authority, clock=clock)
        app_b = create_app(b.db, b.authority, clock=clock)
        app_b.state.umbra.replicas = ReplicaDirectory(b.db, "https://ctl-b.example:8443", clock)
        app_b.state.umbra.replicas.heartbeat()
        bumped = app_a.state.umbra.events.bump("identity bob disabled")
        assert app_b.state.umbra.events.epoch < bumped  # B never heard of it

        hello = asyncio.run(_hello(app_b, admin))
        assert hello["epoch"] == bumped
        assert hello["controllers"] == ["https://ctl-b.example:8443"]
    finally:
        a.db.dispose()
        b.db.dispose()
