"""NAT traversal at the controller: routers' STUN addresses, candidate signalling gated by
the filtered view, and coturn-style TURN credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controller_harness import Harness, error_code, make_harness

POLICY = """{"rules": [
  {"action": "bind", "src": ["srv"], "dst": ["svc:web"]},
  {"action": "dial", "src": ["cli"], "dst": ["svc:web"]},
]}"""


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def test_routers_publish_stun_and_devices_cannot(h: Harness) -> None:
    token = h.client(h.admin).post("/v1/routers", json={"name": "r1"}).json()["enrollment_token"]
    router = h.client(h.enroll(token))
    device = h.client(h.new_device("alice"))
    answer = router.put("/v1/routers/self/stun", json={"host": "198.18.0.1", "port": 3478})
    assert answer.status_code == 200 and answer.json() == {"address": "198.18.0.1:3478"}
    refused = device.put("/v1/routers/self/stun", json={"host": "198.18.0.9", "port": 3478})
    assert refused.status_code == 403
    bad = router.put("/v1/routers/self/stun", json={"host": "stun.example", "port": 3478})
    assert bad.status_code == 400 and error_code(bad) == "invalid_endpoint"
    assert device.get("/v1/network/nat").json() == {
        "stun": ["198.18.0.1:3478"],
        "stun_routers": {"198.18.0.1:3478": "r1"},
        "turn": None,
    }


def test_candidates_reach_only_peers_the_view_allows(h: Harness) -> None:
    admin = h.client(h.admin)
    body = {"name": "web", "host_address": "tcp://127.0.0.1:8080"}
    assert admin.post("/v1/services", json=body).status_code == 201
    assert admin.put("/v1/policy", json={"text": POLICY}).status_code == 200
    srv, cli = h.client(h.new_device("srv")), h.client(h.new_device("cli"))
    outsider = h.client(h.new_device("outsider"))
    mine = [{"kind": "host", "host": "198.19.1.2", "port": 51820},
            {"kind": "srflx", "host": "198.18.10.1", "port": 40000}]  # fmt: skip
    put = srv.put(
        "/v1/network/candidates", json={"candidates": mine, "nat": "endpoint-independent"}
    )
    assert put.status_code == 200, put.text
    assert (
        outsider.put(
            "/v1/network/candidates", json={"candidates": mine[:1], "nat": "unknown"}
        ).status_code
        == 200
    )
    seen = cli.get("/v1/network/candidates").json()["peers"]
    assert next(iter(seen.values()))["candidates"] == mine
    assert len(seen) == 1 and "srv" in next(iter(seen))
    # the outsider has no grant towards or from anyone: it learns nothing, nobody learns it
    assert outsider.get("/v1/network/candidates").json() == {"peers": {}}
    assert all("outsider" not in k for k in srv.get("/v1/network/candidates").json()["peers"])


@pytest.mark.parametrize(
    "candidate",
    [
        {"kind": "prflx", "host": "198.18.0.1", "port": 1},
        {"kind": "host", "host": "peer.example", "port": 1},
        {"kind": "host", "host": "0.0.0.0", "port": 1},
        {"kind": "host", "host": "198.18.0.1", "port": 0},
    ],
)
def test_malformed_candidates_are_refused(h: Harness, candidate: dict[str, object]) -> None:
    device = h.client(h.new_device("alice"))
    answer = device.put("/v1/network/candidates", json={"candidates": [candidate]})
    assert answer.status_code == 400
    assert error_code(answer) in {"invalid_candidate", "invalid_endpoint"}


def test_turn_credentials_follow_the_shared_secret_scheme(h: Harness) -> None:
    admin = h.client(h.admin)
    secret = "s3cret-shared-with-coturn"
    body = {
        "urls": ["turn:198.18.0.1:3478"],
        "realm": "umbra",
        "secret": secret,
        "ttl_seconds": 600,
    }
    device_id = h.new_device("alice")
    device = h.client(device_id)
    assert device.put("/v1/network/turn", json=body).status_code == 403
    assert admin.put("/v1/network/turn", json=body).status_code == 204
    turn = device.get("/v1/network/nat").json()["turn"]
    expiry, _, who = turn["username"].partition(":")
    assert who == device_id.spiffe_id
    assert int(expiry) == int(h.clock.now().unix) + 600
    expect = base64.b64encode(
        hmac.new(secret.encode(), turn["username"].encode(), hashlib.sha1).digest()
    ).decode()
    assert turn["password"] == expect and turn["realm"] == "umbra"
    assert "secret" not in str(turn)


def test_peers_only_a_network_rule_relates_learn_each_others_candidates(h: Harness) -> None:
    """Network mode relates devices by `network` rules alone (no service between them):
    their candidates must reach each other, or they can never go direct."""
    network_only = (
        """{"network": [{"src": ["alice"], "dst": ["db-host:5432"], "proto": ["tcp"]}]}"""
    )
    assert h.client(h.admin).put("/v1/policy", json={"text": network_only}).status_code == 200
    alice, db = h.client(h.new_device("alice")), h.client(h.new_device("db-host"))
    mine = [{"kind": "srflx", "host": "198.18.10.1", "port": 40000}]
    for client in (alice, db):
        assert client.get("/v1/me").status_code == 200  # network mode asks first
        put = client.put("/v1/network/candidates", json={"candidates": mine, "nat": "unknown"})
        assert put.status_code == 200, put.text
    assert any("db-host" in k for k in alice.get("/v1/network/candidates").json()["peers"])
    assert any("alice" in k for k in db.get("/v1/network/candidates").json()["peers"])
