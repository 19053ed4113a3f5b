"""Revocation on a busy router: 10,000 live grants re-checked against the real controller API.

The router's shell (`Router.apply_epoch`) talks to the in-process controller through the same
client it uses in production; the router's switch is replaced by a table of 12,000 live
grants (10,000 distinct, 2,000 duplicates) so the test needs no sockets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.controller_harness import Harness, make_harness
from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.controller.service import recheck as controller_recheck
from umbranet.controller.store import Identity, Service, Store
from umbranet.pki import IdentityFile
from umbranet.router import Router, RouterConfig
from umbranet.wire import ErrorCode

pytestmark = pytest.mark.slow  # 10,000 identities: half a minute each

SERVICES = 50
IDENTITIES = 200  # x 50 services = 10,000 distinct dial grants
TD = "spiffe://demo.umbra/device"


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _router_identity(h: Harness) -> IdentityFile:
    response = h.client(h.admin).post("/v1/routers", json={"name": "r1"})
    assert response.status_code == 201, response.text
    return h.enroll(response.json()["enrollment_token"])


def _populate(h: Harness, *, ticketed: bool = True) -> None:
    """200 enrolled-looking identities, 50 services they may dial, a ticket for each pair."""
    now = h.clock()
    with h.loaded.db.session() as session:
        store = Store(session)
        for s in range(SERVICES):
            store.add(Service(name=f"s{s}", dial_attributes=["eng"], created_at=now))
        for i in range(IDENTITIES):
            identity = Identity(
                name=f"d{i}",
                kind="device",
                spiffe_id=f"{TD}/d{i}",
                attributes=["eng"],
                enabled=True,
                cert_serial=format(1000 + i, "x"),
                created_at=now,
            )
            store.add(identity)
            if ticketed:
                for s in range(SERVICES):
                    store.note_issued(identity.id, f"s{s}", "dial", now + timedelta(minutes=10))


def _live_grants() -> list[tuple[str, str, str, object]]:
    grants: list[tuple[str, str, str, object]] = [
        (f"{TD}/d{i}", f"s{s}", "dial", ("circuit", i, s))
        for i in range(IDENTITIES)
        for s in range(SERVICES)
    ]
    # 2,000 more circuits of one dialer: duplicates cost nothing extra.
    grants += [(f"{TD}/d7", "s3", "dial", ("dup", n)) for n in range(2000)]
    return grants


class _Revocations:
    def __init__(self, router: Router, grants: list[tuple[str, str, str, object]]) -> None:
        self.closed: dict[object, str] = {}
        router.switch.live_grants = lambda links: grants  # type: ignore[method-assign]
        router.switch.revoke = self._revoke  # type: ignore[method-assign]

    def _revoke(self, handle: object, reason: str, code: Any = None) -> None:
        assert handle not in self.closed, "closed twice"
        self.closed[handle] = reason


def test_disabling_one_identity_resets_its_grants_among_10000(h: Harness) -> None:
    router_identity = _router_identity(h)
    _populate(h)
    assert h.client(h.admin).post("/v1/identities/d7/disable").status_code == 200
    epoch = h.app.state.umbra.events.epoch
    sizes: list[int] = []

    async def run() -> tuple[int, float, _Revocations, Router]:
        router = Router(RouterConfig(router_identity, port=0))
        revocations = _Revocations(router, _live_grants())
        async with ControllerClient(
            router_identity, transport=h.transport(router_identity)
        ) as client:

            async def recheck(grants: list[tuple[str, str, str]]) -> dict[int, str]:
                sizes.append(len(grants))
                return (await client.recheck(grants))[1]

            started = time.perf_counter()
            closed = await router.apply_epoch(epoch, recheck)
            return closed, time.perf_counter() - started, revocations, router

    closed, elapsed, revocations, router = asyncio.run(run())
    assert closed == SERVICES + 2000
    assert set(revocations.closed) == {("circuit", 7, s) for s in range(SERVICES)} | {
        ("dup", n) for n in range(2000)
    }
    assert all("identity d7 is disabled" in r for r in revocations.closed.values())
    assert sum(sizes) == 10_000 and max(sizes) <= 256
    assert router.statistics()["counters"]["recheck_requests"] == len(sizes)
    # Audit rows name the router as actor, the identity in the detail.
    rows = h.client(h.admin).get("/v1/audit", params={"action": "access.revoked"}).json()
    assert rows and {r["actor"] for r in rows} == {router_identity.spiffe_id}
    assert {r["detail"]["identity"] for r in rows} == {f"{TD}/d7"}
    print(
        f"\nre-check of 12,000 live grants (10,000 distinct), disable -> closures: {elapsed:.2f} s"
    )


def test_when_rechecks_keep_failing_the_router_fails_closed(h: Harness) -> None:
    router_identity = _router_identity(h)
    grants = [(f"{TD}/d{i}", "db", "dial", i) for i in range(300)]
    calls: list[int] = []

    async def broken(chunk: list[tuple[str, str, str]]) -> dict[int, str]:
        calls.append(len(chunk))
        raise ControllerError("body_too_large", "the request body is too large", 413)

    async def run() -> tuple[int, _Revocations, Router]:
        router = Router(RouterConfig(router_identity, port=0))
        revocations = _Revocations(router, grants)
        return await router.apply_epoch(5, broken), revocations, router

    closed, revocations, router = asyncio.run(run())
    assert closed == 300
    assert set(revocations.closed) == set(range(300))
    assert all("could not be re-checked after epoch 5" in r for r in revocations.closed.values())
    assert calls == [256, 256, 44, 44]  # each chunk tried twice, then given up on
    assert router.statistics()["counters"][ErrorCode.RECHECK_FAILED.code] == 300


def test_recheck_is_no_policy_oracle_for_grants_without_a_current_ticket(h: Harness) -> None:
    router_identity = _router_identity(h)
    _populate(h, ticketed=False)
    body = {
        "grants": [{"identity": f"{TD}/d{i}", "service": "s1", "action": "dial"} for i in range(5)]
    }
    verdicts_before = h.metrics.snapshot()
    response = h.client(router_identity).post("/v1/recheck", json=body)
    assert response.status_code == 200, response.text
    denied = response.json()["denied"]
    # Allowed by policy, but no ticket was issued: answered "close", with no decision made.
    assert [d["index"] for d in denied] == [0, 1, 2, 3, 4]
    assert {d["reason"] for d in denied} == {controller_recheck.NO_CURRENT_TICKET}
    after = h.metrics.snapshot()
    decided = {k for k in after if "verdict" in k or "access" in k}
    assert all(after[k] == verdicts_before.get(k, 0) for k in decided)
    assert h.client(h.admin).get("/v1/audit", params={"action": "access."}).json() == []


def test_an_expired_ticket_takes_the_grant_out_of_scope(h: Harness) -> None:
    router_identity = _router_identity(h)
    _populate(h)
    body = {"grants": [{"identity": f"{TD}/d1", "service": "s1", "action": "dial"}]}
    assert h.client(router_identity).post("/v1/recheck", json=body).json()["denied"] == []
    h.clock.advance(timedelta(minutes=10))
    denied = h.client(router_identity).post("/v1/recheck", json=body).json()["denied"]
    assert denied == [{"index": 0, "reason": controller_recheck.NO_CURRENT_TICKET}]


def test_the_recheck_route_takes_a_full_chunk_and_refuses_an_unbounded_one(h: Harness) -> None:
    router_identity = _router_identity(h)
    grant = {"identity": f"{TD}/{'x' * 60}", "service": "s" * 60, "action": "dial"}
    full = h.client(router_identity).post("/v1/recheck", json={"grants": [grant] * 1024})
    assert full.status_code == 200, full.text
    huge = h.client(router_identity).post("/v1/recheck", json={"grants": [grant] * 10_000})
    assert huge.status_code in {413, 422}
