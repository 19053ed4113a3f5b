"""Network rules and routes at the controller: peers related only by ``network`` rules see
each other with compiled grants; a peer with no grant never learns the other's key; routes
count once approved (by an admin or by autoApprovers) and are given only to clients policy
lets reach into them; ``/v1/network/explain`` answers for addresses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controller_harness import Harness, error_code, make_harness

POLICY = """{
  "tagOwners": {"tag:router": [], "tag:exit": []},
  "network": [
    {"src": ["alice"], "dst": ["db-host:5432", "10.1.0.0/16:443"], "proto": ["tcp"]},
    {"src": ["alice"], "dst": ["10.1.0.0/16"], "proto": ["icmp"]},
    {"src": ["carol"], "dst": ["0.0.0.0/0"]},
  ],
  "autoApprovers": {"exitNode": ["tag:exit"]},
}"""


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _peers(client: object) -> dict[str, dict[str, object]]:
    return {p["name"]: p for p in client.get("/v1/view").json()["peers"]}  # type: ignore[attr-defined]


def test_network_rules_relate_peers_and_compile_grants_and_outsiders_learn_nothing(
    h: Harness,
) -> None:
    admin = h.client(h.admin)
    assert admin.put("/v1/policy", json={"text": POLICY}).status_code == 200
    alice, db, bob = (h.client(h.new_device(n)) for n in ("alice", "db-host", "bob"))
    for client in (alice, db, bob):
        assert client.get("/v1/me").status_code == 200  # network mode asks first
    assert _peers(db)["alice"]["reach"] == ["tcp/5432"]  # "proto": ["tcp"]: no ping
    assert _peers(alice)["db-host"]["reach"] == []  # db-host may only answer alice
    assert "alice" not in _peers(bob) and "bob" not in _peers(db) and "bob" not in _peers(alice)


def test_routes_count_once_approved_and_only_for_clients_that_may_reach_into_them(
    h: Harness,
) -> None:
    admin = h.client(h.admin)
    assert admin.put("/v1/policy", json={"text": POLICY}).status_code == 200
    alice, carol, bob = (h.client(h.new_device(n)) for n in ("alice", "carol", "bob"))
    gw = h.client(h.new_device("gw", ["tag:router"]))
    exit_node = h.client(h.new_device("exit-1", ["tag:exit"]))
    for client in (alice, carol, bob, gw, exit_node):
        client.get("/v1/me")
    answer = gw.put("/v1/network/routes", json={"routes": ["10.1.0.0/16"]})
    assert answer.status_code == 200
    assert answer.json()["routes"][0]["approved"] is None
    assert "gw" not in _peers(alice)  # advertised, not approved: nobody is routed there

    approved = admin.post(
        "/v1/network/routes/approve", json={"identity": "gw", "prefixes": ["10.1.0.0/16"]}
    )
    assert approved.status_code == 200
    seen = _peers(alice)["gw"]
    assert seen["routes"] == ["10.1.0.0/16"]
    by_gw = _peers(gw)
    assert set(by_gw["alice"]["reach"]) == {"tcp/443@10.1.0.0/16", "icmp@10.1.0.0/16"}
    assert "bob" not in by_gw and "gw" not in _peers(bob)
    # 0.0.0.0/0 is every IPv4 address: the LAN behind gw and the overlay included
    assert _peers(carol)["gw"]["routes"] == ["10.1.0.0/16"]

    # An exit node approved by autoApprovers; only carol is given its default routes.
    assert exit_node.put("/v1/network/routes", json={"exit_node": True}).status_code == 200
    assert _peers(carol)["exit-1"]["routes"] == ["0.0.0.0/0"]
    assert "exit-1" not in _peers(alice)
    table = {r["prefix"]: r["approved"] for r in admin.get("/v1/network/routes").json()["routes"]}
    assert table["0.0.0.0/0"] == "policy" and table["10.1.0.0/16"].startswith("admin:")

    # Withdrawing the approval takes the route (and the peer) away again.
    body = {"identity": "gw", "prefixes": ["10.1.0.0/16"], "approve": False}
    assert admin.post("/v1/network/routes/approve", json=body).status_code == 200
    assert "gw" not in _peers(alice)


def test_bad_routes_are_refused(h: Harness) -> None:
    gw = h.client(h.new_device("gw"))
    gw.get("/v1/me")
    for routes in (["nonsense"], ["0.0.0.0/0"], ["100.64.1.0/24"], ["224.0.0.0/4"]):
        answer = gw.put("/v1/network/routes", json={"routes": routes})
        assert error_code(answer) == "invalid_route", routes
    admin = h.client(h.admin)
    missing = {"identity": "gw", "prefixes": ["10.9.0.0/16"]}
    assert error_code(admin.post("/v1/network/routes/approve", json=missing)) == "unknown_route"


def test_explain_answers_for_addresses_and_peer_names(h: Harness) -> None:
    admin = h.client(h.admin)
    assert admin.put("/v1/policy", json={"text": POLICY}).status_code == 200
    h.client(h.new_device("alice")).get("/v1/me")
    db = h.client(h.new_device("db-host"))
    db_ip = db.get("/v1/me").json()["ipv4"]

    def ask(target: str) -> dict[str, object]:
        answer = admin.post("/v1/network/explain", json={"identity": "alice", "target": target})
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    assert ask("10.1.2.3:443/tcp")["allowed"] is True
    refused = ask("10.1.2.3:80/tcp")
    assert refused["allowed"] is False and "default deny" in str(refused["reason"])
    by_address = ask(f"{db_ip}:5432/tcp")
    assert by_address["allowed"] is True and by_address["peer"] == "db-host"
    assert ask("db-host:5432")["allowed"] is True
    assert ask("db-host:22")["allowed"] is False
    bad = admin.post("/v1/network/explain", json={"identity": "alice", "target": "x:y:z"})
    assert error_code(bad) == "invalid_target"
