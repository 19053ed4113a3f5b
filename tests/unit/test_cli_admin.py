"""Admin commands against an in-process controller: identity show|update|delete, service
update (and its warning when a policy decides), router delete|token, join keys, audit rows
printed as fields; and the API behind them takes effect on access at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.controller_harness import Harness, error_code, make_harness
from umbranet.cli.main import app
from umbranet.client.controller import ControllerClient

runner = CliRunner()


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    harnesses = make_harness(tmp_path)
    harness = next(harnesses)
    original = ControllerClient.__init__

    def in_process(self: ControllerClient, identity: Any, **options: Any) -> None:
        # The CLI's admin client reaches the in-process app instead of a socket.
        options.setdefault("transport", harness.transport(identity))
        original(self, identity, **options)

    monkeypatch.setattr(ControllerClient, "__init__", in_process)
    yield harness
    harnesses.close()


def umbra(h: Harness, *args: str) -> Any:
    result = runner.invoke(app, ["--home", str(h.home), *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _dial(h: Harness, who: Any, service: str = "db") -> int:
    response = h.client(who).post("/v1/tickets", json={"service": service, "action": "dial"})
    return response.status_code


def test_identity_update_changes_access_at_once(h: Harness) -> None:
    umbra(h, "service", "create", "db", "--dial-attr", "eng", "--bind-attr", "dbhost")
    alice = h.new_device("alice", ["eng"])
    assert _dial(h, alice) == 200
    epoch = h.app.state.umbra.events.epoch

    shown = umbra(h, "identity", "update", "alice", "--remove-attr", "eng", "--add-attr", "ops")
    assert shown["attributes"] == ["ops"]
    assert _dial(h, alice) == 403
    assert h.app.state.umbra.events.epoch > epoch  # routers re-check live circuits
    assert umbra(h, "identity", "show", "alice")["attributes"] == ["ops"]
    assert umbra(h, "identity", "update", "alice", "--clear-attrs")["attributes"] == []


def test_identity_show_prints_fields(h: Harness) -> None:
    h.new_device("alice", ["db-hosts"])
    result = runner.invoke(app, ["--home", str(h.home), "identity", "show", "alice"])
    assert result.exit_code == 0, result.output
    assert "attributes   db-hosts" in result.output
    assert "spiffe://demo.umbra/device/alice" in result.output


def test_identity_delete_refuses_its_certificate_and_its_live_grants(h: Harness) -> None:
    umbra(h, "service", "create", "db", "--dial-attr", "eng")
    alice = h.new_device("alice", ["eng"])
    router = h.enroll(umbra(h, "router", "create", "r1")["enrollment_token"])
    grant = {"grants": [{"identity": alice.spiffe_id, "service": "db", "action": "dial"}]}
    # A live grant is one with a current ticket (re-checks answer nothing else).
    ticket = h.client(alice).post("/v1/tickets", json={"service": "db", "action": "dial"})
    assert ticket.status_code == 200, ticket.text
    assert h.client(router).post("/v1/recheck", json=grant).json()["denied"] == []
    epoch = h.app.state.umbra.events.epoch

    assert umbra(h, "identity", "delete", "alice", "--yes") == {"deleted": "alice"}
    response = h.client(alice).get("/v1/me")
    assert (response.status_code, error_code(response)) == (401, "unknown_identity")
    # The epoch moved, so routers re-check; alice's live stream is among those closed.
    assert h.app.state.umbra.events.epoch > epoch
    assert [
        d["index"] for d in h.client(router).post("/v1/recheck", json=grant).json()["denied"]
    ] == [0]
    result = runner.invoke(app, ["--home", str(h.home), "--json", "identity", "delete", "admin"])
    assert json.loads(result.output)["error"]["code"] == "cannot_delete_admin"


def test_service_update_keeps_what_is_not_given(h: Harness) -> None:
    umbra(h, "service", "create", "db", "--dial-attr", "eng", "--host", "tcp://127.0.0.1:5432")
    updated = umbra(
        h, "service", "update", "db", "--dial-attr", "ops", "--intercept", "db.umbra:5432"
    )
    assert updated["dial_attributes"] == ["ops"]
    assert updated["host_address"] == "tcp://127.0.0.1:5432"
    assert updated["intercepts"] == [{"host": "db.umbra", "port": 5432}]
    assert umbra(h, "service", "update", "db", "--no-host")["host_address"] is None


def test_attribute_options_warn_when_a_policy_decides(h: Harness, tmp_path: Path) -> None:
    quiet = runner.invoke(
        app, ["--home", str(h.home), "service", "create", "db", "--dial-attr", "eng"]
    )
    assert quiet.exit_code == 0 and "warning" not in quiet.output
    policy = tmp_path / "policy.hujson"
    policy.write_text('{"rules": [{"action": "dial", "src": ["admin"], "dst": ["svc:db"]}]}')
    saved = runner.invoke(app, ["--home", str(h.home), "policy", "set", str(policy)])
    assert saved.exit_code == 0, saved.output
    result = runner.invoke(
        app, ["--home", str(h.home), "service", "update", "db", "--dial-attr", "ops"]
    )
    assert result.exit_code == 0, result.output
    assert "policy version" in result.output and "decides" in result.output


def test_router_token_and_delete(h: Harness) -> None:
    umbra(h, "router", "create", "r1")
    token = umbra(h, "router", "token", "r1")["enrollment_token"]
    router = h.enroll(token)
    assert router.spiffe_id.endswith("/router/r1")
    assert umbra(h, "router", "delete", "r1", "--yes") == {"deleted": "r1"}
    assert umbra(h, "router", "list") == []
    response = h.client(router).get("/v1/me")
    assert response.status_code == 401


def test_joinkey_commands(h: Harness) -> None:
    created = umbra(h, "joinkey", "create", "--reusable", "--ephemeral", "--attr", "web")
    assert created["join_key"].startswith("ujk1.")
    key = created["key"]
    assert (key["reusable"], key["ephemeral_seconds"], key["attributes"]) == (True, 600, ["web"])
    assert [k["id"] for k in umbra(h, "joinkey", "list")] == [key["id"]]
    assert umbra(h, "joinkey", "revoke", key["id"])["revoked_at"] is not None
    bad = runner.invoke(
        app, ["--home", str(h.home), "--json", "joinkey", "create", "--expires", "1y"]
    )
    assert json.loads(bad.output)["error"]["code"] == "invalid_duration"


def test_audit_prints_fields_not_reprs(h: Harness) -> None:
    umbra(h, "service", "create", "db", "--dial-attr", "eng")
    result = runner.invoke(app, ["--home", str(h.home), "audit"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert 'dial_attributes=["eng"]' in result.output
    assert "{'" not in result.output


def test_policy_explain_works_before_a_policy_is_saved(h: Harness) -> None:
    umbra(h, "service", "create", "db", "--dial-attr", "eng", "--bind-attr", "dbhost")
    h.new_device("alice", ["eng"])
    h.new_device("bob", ["ops"])
    allowed = umbra(h, "policy", "explain", "alice", "db")
    assert allowed["allowed"] is True and allowed["version"] is None
    denied = umbra(h, "policy", "explain", "bob", "db")
    assert denied["allowed"] is False and "'eng'" in denied["reason"]
    hosting = umbra(h, "policy", "explain", "alice", "db", "--action", "bind")
    assert hosting["allowed"] is False
    shown = runner.invoke(app, ["--home", str(h.home), "policy", "explain", "bob", "db"])
    assert shown.exit_code == 0
    assert "no policy saved yet" in shown.output and "bob holds: ops" in shown.output
