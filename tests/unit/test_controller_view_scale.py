"""/v1/view at scale: a constant number of database queries whatever the number of peers,
and relay tickets signed once and reused until near expiry or a new epoch."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.controller_harness import Harness, make_harness
from umbranet.controller.service.relay import REUSE_MIN_LEFT

POLICY = """{"rules": [
  {"action": "bind", "src": ["srv"], "dst": ["svc:web"]},
  {"action": "dial", "src": ["group:cli"], "dst": ["svc:web"]},
], "groups": {"group:cli": [%s]}}"""


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _setup(h: Harness, clients: int) -> Any:
    admin = h.client(h.admin)
    body = {"name": "web", "host_address": "tcp://127.0.0.1:8080"}
    assert admin.post("/v1/services", json=body).status_code == 201
    names = [f"cli{i}" for i in range(clients)]
    text = POLICY % ", ".join(f'"{n}"' for n in names)
    assert admin.put("/v1/policy", json={"text": text}).status_code == 200
    srv = h.client(h.new_device("srv"))
    for name in names:
        h.new_device(name)
    return srv


def _queries(h: Harness, client: Any, path: str) -> tuple[int, Any]:
    """How many SQL statements one GET runs, and its answer."""
    engine = h.app.state.umbra.db.engine
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        answer = client.get(path)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    return len(seen), answer


def test_view_and_candidates_cost_the_same_queries_for_2_or_9_peers(tmp_path: Path) -> None:
    """Before, each peer cost a query of its own (its identity row, its candidates)."""
    counts = []
    for n, clients in enumerate((2, 9)):
        for h in make_harness(tmp_path / str(n)):
            srv = _setup(h, clients)
            srv.get("/v1/view")  # the first call assigns overlay addresses (writes)
            view_q, view = _queries(h, srv, "/v1/view")
            cand_q, cand = _queries(h, srv, "/v1/network/candidates")
            assert len(view.json()["peers"]) == clients
            assert cand.status_code == 200
            counts.append((view_q, cand_q))
    assert counts[0] == counts[1]


def test_relay_tickets_are_reused_until_near_expiry_and_a_new_epoch(h: Harness) -> None:
    srv = _setup(h, 3)
    ctx = h.app.state.umbra
    first = {p["name"]: p["relay_ticket"] for p in srv.get("/v1/view").json()["peers"]}
    assert all(first.values()) and len(set(first.values())) == 3
    again = {p["name"]: p["relay_ticket"] for p in srv.get("/v1/view").json()["peers"]}
    assert again == first
    assert ctx.relay_tickets.statistics()["signed"] == 3

    # Reused while a device could still hold it until its next refresh, not after.
    used = ctx.authority.ticket_lifetime - REUSE_MIN_LEFT
    h.clock.advance(used - timedelta(seconds=1))
    assert {p["name"]: p["relay_ticket"] for p in srv.get("/v1/view").json()["peers"]} == first
    h.clock.advance(timedelta(seconds=2))
    later = {p["name"]: p["relay_ticket"] for p in srv.get("/v1/view").json()["peers"]}
    assert set(later.values()).isdisjoint(first.values())

    # A new epoch (a revocation) never reuses a ticket signed under the old one.
    ctx.events.bump("test")
    bumped = {p["name"]: p["relay_ticket"] for p in srv.get("/v1/view").json()["peers"]}
    assert set(bumped.values()).isdisjoint(later.values())
