"""Posture through the controller: endpoints report, tickets and re-checks follow the report,
changes that matter bump the epoch (and only those), the minute clock catches time-driven
changes, denies and revocations reach the audit log, bind grants carry the HTTP rules, and a
service the policy needs cannot be deleted from under it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.controller_harness import Harness, error_code, make_harness, refusal_reason
from umbranet.controller.events import BumpLimiter, EpochEvent
from umbranet.controller.posture_ticker import PostureTicker

POLICY = """{
  "postures": {
    "posture:guarded": {"os": ["linux"], "processRunning": ["edr-agent"]},
    "posture:fresh": {"certAgeMaxHours": 1},
  },
  "rules": [
    {"action": "dial", "src": ["alice"], "dst": ["svc:web"], "posture": ["posture:guarded"]},
    {"action": "dial", "src": ["carol"], "dst": ["svc:web"], "posture": ["posture:fresh"]},
    {"action": "bind", "src": ["host"], "dst": ["svc:web"]},
  ],
  "http": [
    {"src": ["alice"], "dst": ["svc:web"], "methods": ["GET"], "paths": ["/public"]},
  ],
}"""

GUARDED = {"os": "linux", "os_version": "6.1", "sdk_version": "0.1", "processes": ["edr-agent"]}
UNGUARDED = {**GUARDED, "processes": ["bash"]}


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _setup(h: Harness) -> tuple[TestClient, TestClient, TestClient]:
    admin = h.client(h.admin)
    assert admin.post("/v1/services", json={"name": "web"}).status_code == 201
    alice = h.client(h.new_device("alice"))
    host = h.client(h.new_device("host"))
    response = admin.put("/v1/policy", json={"text": POLICY})
    assert response.status_code == 200, response.text
    return admin, alice, host


def _dial(client: TestClient, h: Harness | None = None) -> tuple[int, str]:
    """Status and, with `h`, the refusal's reason as an admin sees it by decision id."""
    response = client.post("/v1/tickets", json={"service": "web", "action": "dial"})
    if response.status_code == 200:
        return 200, ""
    message: str = response.json()["error"]["message"]
    return response.status_code, refusal_reason(h, message) if h is not None else message


def test_tickets_follow_the_reported_posture(h: Harness) -> None:
    _, alice, _ = _setup(h)
    status, reason = _dial(alice, h)
    assert status == 403 and "posture:guarded is unknown" in reason

    response = alice.post("/v1/posture", json=GUARDED)
    assert response.status_code == 200, response.text
    assert response.json()["changed"] is True
    assert _dial(alice) == (200, "")

    alice.post("/v1/posture", json=UNGUARDED)
    status, reason = _dial(alice, h)
    assert status == 403 and "process 'edr-agent' not running" in reason


def test_only_changes_that_move_an_outcome_bump_the_epoch(h: Harness) -> None:
    _, alice, _ = _setup(h)
    events = h.app.state.umbra.events
    first = alice.post("/v1/posture", json=GUARDED).json()
    assert first["rechecked"] is True  # unknown -> holds
    epoch = events.epoch

    same = alice.post("/v1/posture", json=GUARDED).json()
    assert (same["changed"], same["rechecked"]) == (False, False)
    other_process = alice.post("/v1/posture", json={**GUARDED, "processes": ["edr-agent", "vim"]})
    assert other_process.json() == {"changed": True, "rechecked": False, "epoch": epoch}
    assert events.epoch == epoch

    failing = alice.post("/v1/posture", json=UNGUARDED).json()
    assert failing["rechecked"] is True
    assert events.epoch > epoch


def test_router_rechecks_use_posture_and_are_audited(h: Harness) -> None:
    admin, alice, _ = _setup(h)
    created = admin.post("/v1/routers", json={"name": "r1"}).json()
    router = h.client(h.enroll(created["enrollment_token"]))
    alice.post("/v1/posture", json=GUARDED)
    # Routers re-check only grants the controller issued a current ticket for.
    assert alice.post("/v1/tickets", json={"service": "web", "action": "dial"}).status_code == 200
    grant = {"identity": alice.get("/v1/me").json()["spiffe_id"], "service": "web"}
    grant["action"] = "dial"

    assert router.post("/v1/recheck", json={"grants": [grant]}).json()["denied"] == []
    alice.post("/v1/posture", json=UNGUARDED)
    denied = router.post("/v1/recheck", json={"grants": [grant]}).json()["denied"]
    assert len(denied) == 1 and "process 'edr-agent' not running" in denied[0]["reason"]

    audit = admin.get("/v1/audit").json()
    revoked = [e for e in audit if e["action"] == "access.revoked"]
    assert revoked and revoked[0]["target"] == "web"
    assert "edr-agent" in revoked[0]["detail"]["reason"]
    assert revoked[0]["actor"] == "spiffe://demo.umbra/router/r1"
    assert revoked[0]["detail"]["identity"] == grant["identity"]


def test_denied_tickets_are_audited_once_per_interval(h: Harness) -> None:
    admin, alice, _ = _setup(h)
    for _ in range(5):
        assert _dial(alice)[0] == 403
    denies = [e for e in admin.get("/v1/audit").json() if e["action"] == "access.deny"]
    assert len(denies) == 1
    assert denies[0]["actor"].endswith("/alice") and denies[0]["target"] == "web"
    assert "posture:guarded" in denies[0]["detail"]["reason"]

    h.clock.advance(timedelta(seconds=11))
    _dial(alice)
    denies = [e for e in admin.get("/v1/audit").json() if e["action"] == "access.deny"]
    assert len(denies) == 2


def test_the_minute_clock_catches_postures_that_change_with_time(h: Harness) -> None:
    admin = h.client(h.admin)
    assert admin.post("/v1/services", json={"name": "web"}).status_code == 201
    carol = h.client(h.new_device("carol"))
    h.new_device("host")
    assert admin.put("/v1/policy", json={"text": POLICY}).status_code == 200
    carol.post("/v1/posture", json=GUARDED)  # records the age of carol's certificate
    assert _dial(carol) == (200, "")

    ticker = PostureTicker(h.app.state.umbra)
    assert ticker.tick() == []  # first look only records
    epoch = h.app.state.umbra.events.epoch
    h.clock.advance(timedelta(minutes=30))
    assert ticker.tick() == []
    h.clock.advance(timedelta(minutes=31))
    events = h.app.state.umbra.events

    async def tick() -> tuple[list[str], EpochEvent]:
        queue = events.subscribe()
        try:
            moved = await asyncio.to_thread(ticker.tick)
            return moved, await asyncio.wait_for(queue.get(), 10)
        finally:
            events.unsubscribe(queue)

    moved, event = asyncio.run(tick())
    assert moved == ["carol"]
    assert events.epoch > epoch
    assert event.identities == ("spiffe://demo.umbra/device/carol",)  # only carol re-checked
    status, reason = _dial(carol, h)
    assert status == 403 and "certificate age" in reason


def test_posture_reports_are_bounded(h: Harness) -> None:
    _, alice, _ = _setup(h)
    too_many = {"processes": [f"p{i}" for i in range(9000)]}
    assert alice.post("/v1/posture", json=too_many).status_code == 422
    assert alice.post("/v1/posture", json={"os": "x" * 65}).status_code == 422
    assert alice.post("/v1/posture", json={"colour": "blue"}).status_code == 422
    assert h.client().post("/v1/posture", json=GUARDED).status_code == 401


def test_bind_grants_carry_the_services_http_rules(h: Harness) -> None:
    _, alice, host = _setup(h)
    bind = host.post("/v1/tickets", json={"service": "web", "action": "bind"}).json()
    rules = bind["http_rules"]
    assert rules["service"] == "web"
    assert [(r["names"], r["methods"], r["paths"]) for r in rules["rules"]] == [
        (["alice"], ["GET"], ["/public"])
    ]
    alice.post("/v1/posture", json=GUARDED)
    dial = alice.post("/v1/tickets", json={"service": "web", "action": "dial"}).json()
    assert dial.get("http_rules") is None  # only hosts get the rules


def test_a_service_the_policy_needs_cannot_be_deleted(h: Harness) -> None:
    admin, alice, _ = _setup(h)
    response = admin.delete("/v1/services/web")
    assert response.status_code == 409
    assert error_code(response) == "service_in_policy"
    assert "change the policy first" in response.json()["error"]["message"]
    alice.post("/v1/posture", json=GUARDED)
    assert _dial(alice) == (200, "")  # the network still works

    assert admin.put("/v1/policy", json={"text": '{"rules": []}'}).status_code == 200
    assert admin.delete("/v1/services/web").status_code == 204


def test_a_flapping_posture_bumps_the_epoch_at_most_once_per_interval(h: Harness) -> None:
    _, alice, _ = _setup(h)
    context = h.app.state.umbra
    # Long enough that 30 posts fit inside it on a loaded machine (0.5 s did not).
    context.posture_bumps = BumpLimiter(interval=3.0, burst=2)
    seen: list[EpochEvent] = []

    async def run() -> None:
        queue = context.events.subscribe()
        try:
            for n in range(30):  # 30 flips in well under the interval
                body = GUARDED if n % 2 == 0 else UNGUARDED
                await asyncio.to_thread(alice.post, "/v1/posture", json=body)
            # Two go out at once (the burst); the other 28 are coalesced into one, due when
            # the next token is.
            for _ in range(3):
                seen.append(await asyncio.wait_for(queue.get(), 10))
            with contextlib.suppress(TimeoutError):
                seen.append(await asyncio.wait_for(queue.get(), 1.0))
        finally:
            context.events.unsubscribe(queue)

    asyncio.run(run())
    assert len(seen) == 3
    assert context.posture_bumps.deferred == 28
    alice_id = "spiffe://demo.umbra/device/alice"
    # Each event names the one endpoint whose posture moved: routers re-check only its grants.
    assert all(event.identities == (alice_id,) for event in seen)
