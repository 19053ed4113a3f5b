"""Several controller replicas on one PostgreSQL database: one epoch, one periodic clock.

Each replica here is what `umbra controller run` builds: its own engine, its own app and
event hub, and (`start_cluster`) its own epoch listener, on one shared database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.controller_harness import cert_der, enroll_request, error_code, make_harness
from tests.pg_harness import PgCluster
from umbranet.controller.api import create_app
from umbranet.controller.api.context import AppContext
from umbranet.controller.cluster import (
    MAX_PAYLOAD,
    ClusterLease,
    decode_event,
    encode_event,
)
from umbranet.controller.ephemeral_sweeper import EphemeralSweeper
from umbranet.controller.events import EpochEvent
from umbranet.controller.home import init_home, load_home
from umbranet.controller.server import TlsScopeApp
from umbranet.controller.store import Database
from umbranet.pki import IdentityFile, verify_ticket
from umbranet.testing.clock import FakeClock


@dataclass
class Replica:
    app: FastAPI
    context: AppContext
    db: Database
    clock: FakeClock

    def client(self, identity: IdentityFile | None = None) -> TestClient:
        der = cert_der(identity) if identity is not None else None
        return TestClient(TlsScopeApp(self.app, der), base_url="https://testserver")


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[tuple[Replica, Replica, IdentityFile]]:
    """Two replicas of one controller home on one PostgreSQL database, listeners running."""
    clock = FakeClock()
    _, admin = init_home(tmp_path / "home", clock(), db_url=pg_url)
    replicas = []
    for _ in range(2):
        loaded = load_home(tmp_path / "home")
        app = create_app(loaded.db, loaded.authority, clock=clock)
        context: AppContext = app.state.umbra
        # No periodic catch-up during a test: what arrives, arrives by NOTIFY.
        context.start_cluster(poll=3600)
        replicas.append(Replica(app, context, loaded.db, clock))
    try:
        for replica in replicas:
            assert replica.context.listener is not None
            assert replica.context.listener.connected.wait(10), "listener did not connect"
        yield replicas[0], replicas[1], admin
    finally:
        for replica in replicas:
            replica.context.stop_cluster()
            replica.db.dispose()


def test_a_revocation_through_one_replica_reaches_the_subscribers_of_another(
    cluster: tuple[Replica, Replica, IdentityFile],
) -> None:
    a, b, admin = cluster
    created = a.client(admin).post("/v1/identities", json={"name": "bob", "kind": "device"})
    assert created.status_code == 201, created.text

    async def follow_b_while_a_disables() -> tuple[EpochEvent, float]:
        queue = b.context.events.subscribe()
        try:
            started = time.monotonic()
            response = await asyncio.to_thread(a.client(admin).post, "/v1/identities/bob/disable")
            assert response.status_code == 200, response.text
            event = await asyncio.wait_for(queue.get(), 10)
            return event, time.monotonic() - started
        finally:
            b.context.events.unsubscribe(queue)

    event, delay = asyncio.run(follow_b_while_a_disables())
    print(f"\nepoch fan-out A -> B subscriber: {delay * 1000:.1f} ms (incl. the disable call)")
    assert event.reason == "identity bob disabled"
    assert event.epoch == a.context.events.epoch == b.context.events.epoch
    # B's routers re-check with B, which reads the committed change.
    assert b.client(admin).get("/v1/identities/bob").json()["enabled"] is False
    assert b.context.listener is not None and b.context.listener.received >= 1
    assert b.client().get("/readyz").json()["checks"]["epoch_listener"] == "ok"


def test_every_bump_on_one_replica_reaches_the_other_in_order(
    cluster: tuple[Replica, Replica, IdentityFile],
) -> None:
    """100 bumps through A, each scoped to one identity: B's subscriber gets every one, in
    order (a skipped scoped event would be a missed re-check). Prints the delays."""
    a, b, _ = cluster

    async def bump_and_follow() -> tuple[list[EpochEvent], list[float]]:
        queue = b.context.events.subscribe()
        events, delays = [], []
        try:
            for i in range(100):
                started = time.monotonic()
                await asyncio.to_thread(a.context.events.bump, f"bump {i}", [f"spiffe://x/{i}"])
                events.append(await asyncio.wait_for(queue.get(), 10))
                delays.append(time.monotonic() - started)
        finally:
            b.context.events.unsubscribe(queue)
        return events, delays

    events, delays = asyncio.run(bump_and_follow())
    assert [e.identities for e in events] == [(f"spiffe://x/{i}",) for i in range(100)]
    assert [e.epoch for e in events] == sorted({e.epoch for e in events})
    delays.sort()
    print(
        f"\nepoch fan-out A -> B over {len(delays)} bumps: median {delays[50] * 1000:.2f} ms, "
        f"p99 {delays[98] * 1000:.2f} ms, max {delays[-1] * 1000:.2f} ms"
    )


def test_revoked_keys_announced_by_one_replica_are_in_the_other_replicas_hello(
    cluster: tuple[Replica, Replica, IdentityFile],
) -> None:
    a, b, _ = cluster
    epoch = a.context.events.bump("certificates of x revoked", revoked_keys=["ab" * 32])
    deadline = time.monotonic() + 10
    while b.context.events.epoch < epoch and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b.context.events.epoch == epoch
    assert "ab" * 32 in b.context.events.revoked_keys()


def test_a_rolled_back_change_announces_nothing(
    cluster: tuple[Replica, Replica, IdentityFile],
) -> None:
    a, b, _ = cluster

    async def first_event_b_sees() -> EpochEvent:
        queue = b.context.events.subscribe()
        try:
            with pytest.raises(RuntimeError), a.context.transaction() as store:
                a.context.events.bump("never committed", store=store)
                raise RuntimeError("the change failed")
            a.context.events.bump("committed")
            return await asyncio.wait_for(queue.get(), 10)
        finally:
            b.context.events.unsubscribe(queue)

    event = asyncio.run(first_event_b_sees())
    assert event.reason == "committed"
    assert a.context.events.epoch == b.context.events.epoch == event.epoch


def test_a_listener_that_missed_announcements_catches_up_from_the_stored_epoch(
    cluster: tuple[Replica, Replica, IdentityFile],
) -> None:
    a, b, _ = cluster
    b.context.stop_cluster()  # B hears nothing while A bumps
    epoch = a.context.events.bump("while B was away")
    assert b.context.events.epoch < epoch
    b.context.start_cluster(poll=3600)
    deadline = time.monotonic() + 10
    while b.context.events.epoch < epoch and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b.context.events.epoch == epoch
    assert b.context.listener is not None and b.context.listener.caught_up == 1


def test_one_replica_at_a_time_runs_the_periodic_jobs(
    cluster: tuple[Replica, Replica, IdentityFile],
) -> None:
    a, b, _ = cluster
    lease_a, lease_b = ClusterLease(a.db), ClusterLease(b.db)
    try:
        assert lease_a.held()
        assert not lease_b.held()
        assert lease_a.held()  # still held on the next tick
        lease_a.release()  # A stops (or its connection dies)
        assert lease_b.held()
        assert not lease_a.held()
    finally:
        lease_a.release()
        lease_b.release()


def _enroll(replica: Replica, admin: IdentityFile, name: str, attrs: list[str]) -> IdentityFile:
    body = {"name": name, "kind": "device", "attributes": attrs}
    token = replica.client(admin).post("/v1/identities", json=body).json()["enrollment_token"]
    response, (key_pem, noise_private) = enroll_request(replica.client(), token)
    assert response.status_code == 200, response.text
    data = response.json()
    return IdentityFile(
        name=name,
        spiffe_id=data["spiffe_id"],
        key_pem=key_pem,
        cert_pem=data["cert_pem"].encode(),
        bundle=replica.context.authority.bundle,
        controller_url=replica.context.authority.controller_url,
        noise_private_key=noise_private,
    )


def test_a_refusal_retried_on_every_replica_is_audited_once(
    cluster: tuple[Replica, Replica, IdentityFile],
) -> None:
    a, b, admin = cluster
    service = {"name": "db", "dial_attributes": ["eng"], "bind_attributes": ["dbhost"]}
    assert a.client(admin).post("/v1/services", json=service).status_code == 201
    alice = _enroll(a, admin, "alice", ["eng"])
    decisions = []
    for replica in (a, b, a, b):
        response = replica.client(alice).post(
            "/v1/tickets", json={"service": "db", "action": "bind"}
        )
        assert response.status_code == 403, response.text
        decisions.append(response.json()["error"]["message"].split("decision ")[1].split(";")[0])
    assert len(set(decisions)) == 1
    with b.context.transaction() as store:
        rows = [e for e in store.audit_events() if e.action == "access.deny"]
    assert len(rows) == 1


def test_the_lease_is_always_held_on_sqlite(tmp_path: Path) -> None:
    db = Database.open(f"sqlite:///{tmp_path / 'umbra.db'}")
    try:
        assert ClusterLease(db).held() and ClusterLease(db).held()
    finally:
        db.dispose()


def test_announcements_fit_notify_and_degrade_to_a_wider_recheck() -> None:
    small = EpochEvent(7, "identity bob disabled", ("spiffe://d/device/bob",), ("ab" * 32,))
    assert decode_event(encode_event(small)) == small
    huge = EpochEvent(8, "posture", tuple(f"spiffe://d/device/{i:0400}" for i in range(64)))
    decoded = decode_event(encode_event(huge))
    assert decoded == EpochEvent(8, "posture")  # unscoped: every grant is re-checked
    keys = tuple(f"{i:064x}" for i in range(400))
    payload = encode_event(EpochEvent(9, "many", (), keys))
    assert len(payload.encode()) <= MAX_PAYLOAD
    decoded = decode_event(payload)
    assert decoded is not None and decoded.revoked_keys == keys[: len(decoded.revoked_keys)]
    assert decode_event("not json") is None
    assert decode_event('{"r": "no epoch"}') is None


def test_with_the_database_gone_the_api_says_so_and_issued_tickets_still_verify(
    tmp_path: Path, pg_cluster: PgCluster
) -> None:
    name = pg_cluster.create_database()
    harness = make_harness(tmp_path, pg_cluster.url(name))
    h = next(harness)
    try:
        service = {"name": "db", "dial_attributes": ["eng"], "bind_attributes": ["dbhost"]}
        assert h.client(h.admin).post("/v1/services", json=service).status_code == 201
        alice = h.new_device("alice", ["eng"])
        granted = h.client(alice).post("/v1/tickets", json={"service": "db", "action": "dial"})
        assert granted.status_code == 200
        assert h.client().get("/readyz").json() == {
            "ready": True,
            "checks": {"database": "ok", "schema": "ok", "keys": "ok"},
        }
        pg_cluster.drop_database(name)  # the database goes away under the running app

        refused = h.client(alice).post("/v1/tickets", json={"service": "db", "action": "dial"})
        assert refused.status_code == 503
        assert error_code(refused) == "database_unavailable"
        assert refused.headers["retry-after"] == "1"
        ready = h.client().get("/readyz")
        assert (ready.status_code, ready.json()["checks"]["database"]) == (503, "unreachable")
        assert h.client().get("/healthz").status_code == 200
        # Routers check tickets offline: the one issued before keeps verifying.
        ticket = verify_ticket(granted.json()["ticket"], h.loaded.authority.bundle, h.clock())
        assert ticket.spiffe_id == alice.spiffe_id
    finally:
        harness.close()


def test_ephemeral_identities_are_removed_once_and_only_when_offline_on_every_replica(
    cluster: tuple[Replica, Replica, IdentityFile],
) -> None:
    a, b, admin = cluster
    created = a.client(admin).post("/v1/joinkeys", json={"reusable": True, "ephemeral_seconds": 60})
    assert created.status_code == 201, created.text
    redeemed = (
        a.client()
        .post(
            "/v1/joinkeys/redeem",
            json={"join_key": created.json()["join_key"], "name_prefix": "web-"},
        )
        .json()
    )
    member = redeemed["name"]
    spiffe_id = a.client(admin).get(f"/v1/identities/{member}").json()["spiffe_id"]
    sweep_a, sweep_b = EphemeralSweeper(a.context), EphemeralSweeper(b.context)
    assert sweep_a.tick() == []  # A takes the lease: it alone removes
    b.context.presence.enter(spiffe_id)  # online on B only

    for _ in range(5):  # 150 s: B notes the member online, so A must not remove it
        a.clock.advance(timedelta(seconds=30))
        assert sweep_b.tick() == []
        assert sweep_a.tick() == []

    b.context.presence.leave(spiffe_id)
    a.clock.advance(timedelta(seconds=61))
    assert sweep_b.tick() == []  # offline long enough, but B does not hold the lease
    assert sweep_a.tick() == [member]


def test_a_replica_starting_announces_the_epoch_it_moved_to(
    cluster: tuple[Replica, Replica, IdentityFile], tmp_path: Path
) -> None:
    """A starting replica raises the shared epoch to its clock; the running ones follow at
    once rather than issuing tickets of the old epoch until their next catch-up."""
    a, _, _ = cluster
    a.clock.advance(timedelta(hours=1))  # the new replica's clock is ahead of every bump
    loaded = load_home(tmp_path / "home")
    try:
        c = create_app(loaded.db, loaded.authority, clock=a.clock).state.umbra
        deadline = time.monotonic() + 10
        while a.context.events.epoch < c.events.epoch and time.monotonic() < deadline:
            time.sleep(0.02)
        assert a.context.events.epoch == c.events.epoch
        assert a.context.listener is not None and a.context.listener.caught_up == 0
    finally:
        loaded.db.dispose()


def test_an_epoch_moved_without_a_notification_is_caught_up_by_polling(
    cluster: tuple[Replica, Replica, IdentityFile],
) -> None:
    """A lost notification (here: the row moved by hand, nothing announced) costs at most
    one poll interval, and the event then asks for a full re-check."""
    a, b, _ = cluster
    b.context.stop_cluster()
    b.context.start_cluster(poll=0.2)
    assert b.context.listener is not None and b.context.listener.connected.wait(10)
    target = b.context.events.epoch + 1000

    def move_the_row() -> None:
        with a.db.engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE controller_state SET value = :v WHERE name = 'epoch'"),
                {"v": target},
            )

    async def next_event() -> EpochEvent:
        queue = b.context.events.subscribe()  # before the move: nothing can slip past
        try:
            await asyncio.to_thread(move_the_row)
            return await asyncio.wait_for(queue.get(), 10)
        finally:
            b.context.events.unsubscribe(queue)

    event = asyncio.run(next_event())
    assert (event.epoch, event.identities) == (target, ())
    assert b.context.listener.caught_up == 1
