"""The policy document through the controller API: save, refuse, history, rollback, explain,
audit, and tickets decided by the policy in force."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.controller_harness import Harness, error_code, make_harness, refusal_reason

ALLOW_ALICE = """{
  // alice may dial svc; nobody else may
  "rules": [
    {"action": "dial", "src": ["alice"], "dst": ["svc:svc"]},
  ],
  "tests": [{"src": "alice", "accept": ["svc:svc"]}],
}"""

ALLOW_BOB = """{
  "rules": [{"action": "dial", "src": ["bob"], "dst": ["svc:svc"]}],
}"""

FAILING_TEST = """{
  "rules": [{"action": "dial", "src": ["bob"], "dst": ["svc:svc"]}],
  "tests": [{"src": "alice", "accept": ["svc:svc"]}],
}"""


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _setup(h: Harness) -> tuple[TestClient, TestClient, TestClient]:
    admin = h.client(h.admin)
    body = {"name": "svc", "dial_attributes": ["eng"], "bind_attributes": ["host"]}
    assert admin.post("/v1/services", json=body).status_code == 201
    # Both carry "eng", so the attribute rule alone would let both dial.
    alice = h.client(h.new_device("alice", ["eng"]))
    bob = h.client(h.new_device("bob", ["eng"]))
    return admin, alice, bob


def _ticket(client: TestClient) -> tuple[int, str]:
    response = client.post("/v1/tickets", json={"service": "svc", "action": "dial"})
    if response.status_code == 200:
        return 200, ""
    return response.status_code, response.json()["error"]["message"]


def test_policy_in_force_decides_tickets(h: Harness) -> None:
    admin, alice, bob = _setup(h)
    assert error_code(admin.get("/v1/policy")) == "no_policy"
    assert _ticket(bob)[0] == 200  # no policy yet: the attribute rule

    response = admin.put("/v1/policy", json={"text": ALLOW_ALICE, "comment": "first"})
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1
    assert admin.get("/v1/policy").json()["text"] == ALLOW_ALICE

    assert _ticket(alice) == (200, "")
    status, reason = _ticket(bob)
    assert status == 403
    assert reason, "a deny carries the policy's reason"
    me = bob.get("/v1/me").json()
    assert me["services"] == []


def test_refused_policies_leave_the_old_version_in_force(h: Harness) -> None:
    admin, alice, bob = _setup(h)
    assert admin.put("/v1/policy", json={"text": ALLOW_ALICE}).status_code == 200

    response = admin.put("/v1/policy", json={"text": FAILING_TEST})
    assert response.status_code == 400
    assert error_code(response) == "policy_tests_failed"
    assert "line 3" in response.json()["error"]["message"]

    response = admin.put("/v1/policy", json={"text": '{\n  "rules": [,\n}'})
    assert response.status_code == 400
    assert error_code(response) == "policy_invalid"
    assert "line 2, column" in response.json()["error"]["message"]

    response = admin.post("/v1/policy/test", json={"text": FAILING_TEST})
    assert error_code(response) == "policy_tests_failed"
    assert admin.post("/v1/policy/test", json={"text": ALLOW_BOB}).json()["valid"] is True

    assert admin.get("/v1/policy").json()["version"] == 1
    assert _ticket(alice)[0] == 200
    assert _ticket(bob)[0] == 403


def test_history_rollback_explain_and_audit(h: Harness) -> None:
    admin, alice, bob = _setup(h)
    epoch = h.app.state.umbra.events.epoch
    assert admin.put("/v1/policy", json={"text": ALLOW_ALICE}).status_code == 200
    assert admin.put("/v1/policy", json={"text": ALLOW_BOB}).status_code == 200
    assert h.app.state.umbra.events.epoch > epoch
    assert _ticket(alice)[0] == 403
    assert _ticket(bob)[0] == 200

    history = admin.get("/v1/policy/history").json()
    assert [v["version"] for v in history] == [2, 1]

    response = admin.post("/v1/policy/rollback", json={"version": 1})
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 3
    assert response.json()["text"] == ALLOW_ALICE
    assert _ticket(alice)[0] == 200
    assert _ticket(bob)[0] == 403
    assert error_code(admin.post("/v1/policy/rollback", json={"version": 99})) == (
        "unknown_policy_version"
    )

    for name, client in (("alice", alice), ("bob", bob)):
        explained = admin.post("/v1/policy/explain", json={"identity": name, "service": "svc"})
        assert explained.status_code == 200, explained.text
        body = explained.json()
        status, reason = _ticket(client)
        assert body["allowed"] is (status == 200)
        assert body["version"] == 3
        assert any(rule["decisive"] for rule in body["rules"]) or not body["allowed"]
        if status != 200:
            assert body["reason"] == refusal_reason(h, reason)

    audit = admin.get("/v1/audit", params={"limit": 3, "action": "policy.set"}).json()
    assert [e["action"] for e in audit] == ["policy.set", "policy.set", "policy.set"]
    denies = admin.get("/v1/audit", params={"action": "access."}).json()
    assert denies and {e["action"] for e in denies} == {"access.deny"}
    assert audit[0]["detail"]["before"] == 2
    assert audit[0]["detail"]["after"] == 3
    assert audit[0]["actor"] == h.admin.spiffe_id
    json.dumps(audit)


def test_policy_routes_need_an_admin(h: Harness) -> None:
    _, alice, _ = _setup(h)
    assert alice.get("/v1/policy").status_code == 403
    assert alice.put("/v1/policy", json={"text": ALLOW_ALICE}).status_code == 403
    assert alice.get("/v1/audit").status_code == 403


def test_admin_changes_are_audited_with_before_and_after(h: Harness) -> None:
    admin, _alice, _bob = _setup(h)
    assert admin.post("/v1/identities/bob/disable").status_code == 200
    assert admin.delete("/v1/services/svc").status_code == 204
    audit = admin.get("/v1/audit", params={"limit": 2}).json()
    deleted, disabled = audit
    assert disabled["action"] == "identity.disable"
    assert disabled["detail"] == {"before": {"enabled": True}, "after": {"enabled": False}}
    assert deleted["action"] == "service.delete"
    assert deleted["detail"]["before"]["dial_attributes"] == ["eng"]
    assert deleted["detail"]["after"] is None
    assert {e["actor"] for e in audit} == {h.admin.spiffe_id}


def test_port_rules_decide_tickets_per_port(h: Harness) -> None:
    admin, alice, _bob = _setup(h)
    text = '{"rules": [{"action": "dial", "src": ["alice"], "dst": ["svc:svc:443,8000-8099"]}]}'
    assert admin.put("/v1/policy", json={"text": text}).status_code == 200

    def ticket(**extra: object) -> int:
        body = {"service": "svc", "action": "dial", **extra}
        return alice.post("/v1/tickets", json=body).status_code

    assert ticket(port=443) == 200
    assert ticket(port=8042) == 200
    assert ticket() == 200  # by name: some port is allowed
    assert ticket(port=22) == 403
    assert ticket(port=0) == 422
    bind = alice.post("/v1/tickets", json={"service": "svc", "action": "bind", "port": 443})
    assert error_code(bind) == "invalid_port"


def test_views_follow_identities_and_services_as_they_change(h: Harness) -> None:
    admin, alice, _bob = _setup(h)
    host = h.client(h.new_device("host", ["host"]))
    text = """{"rules": [
      {"action": "dial", "src": ["alice", "carol"], "dst": ["*"]},
      {"action": "bind", "src": ["host"], "dst": ["*"]},
    ]}"""
    assert admin.put("/v1/policy", json={"text": text}).status_code == 200

    def peers() -> list[str]:
        return [p["name"] for p in host.get("/v1/view").json()["peers"]]

    assert peers() == ["alice"]
    h.new_device("carol")
    assert peers() == ["alice", "carol"]  # a new identity is seen at once
    assert admin.post("/v1/identities/carol/disable").status_code == 200
    assert peers() == ["alice"]
    assert admin.post("/v1/identities/carol/enable").status_code == 200
    assert peers() == ["alice", "carol"]
    assert alice.get("/v1/view").json()["services"] == {"svc": ["dial"]}
    assert admin.post("/v1/services", json={"name": "svc2"}).status_code == 201
    assert alice.get("/v1/view").json()["services"] == {"svc": ["dial"], "svc2": ["dial"]}
