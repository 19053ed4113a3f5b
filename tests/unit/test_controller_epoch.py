"""The revocation epoch is stored: monotonic across restarts, clock steps back and writers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.controller_harness import FakeClock
from umbranet.controller.api import create_app
from umbranet.controller.events import (
    BumpLimiter,
    EventHub,
    MemoryEpochStore,
    SqlEpochStore,
    epoch_of,
)
from umbranet.controller.home import init_home, load_home
from umbranet.controller.store import Database, make_engine, migrate


def _app_epoch(home: Path, clock: FakeClock, bumps: int = 0) -> int:
    loaded = load_home(home)
    try:
        events = create_app(loaded.db, loaded.authority, clock=clock).state.umbra.events
        for n in range(bumps):
            events.bump(f"test {n}")
        epoch: int = events.epoch
        return epoch
    finally:
        loaded.db.dispose()


def test_a_restart_with_the_clock_set_back_keeps_the_epoch_moving_forward(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    init_home(tmp_path / "home", clock())
    before = _app_epoch(tmp_path / "home", clock, bumps=3)
    clock.step_wall(timedelta(hours=-2))  # NTP step back, then a restart
    after_restart = _app_epoch(tmp_path / "home", clock)
    assert after_restart >= before
    assert _app_epoch(tmp_path / "home", clock, bumps=1) > before


def test_concurrent_bumps_get_distinct_increasing_epochs(tmp_path: Path) -> None:
    db = Database.open(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
        hubs = [EventHub(clock, SqlEpochStore(db)) for _ in range(2)]  # two workers
        seen: list[int] = []
        lock = threading.Lock()

        def worker(hub: EventHub) -> None:
            for _ in range(20):
                value = hub.bump("race")
                with lock:
                    seen.append(value)

        threads = [threading.Thread(target=worker, args=(hubs[i % 2],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(seen) == 80 and len(set(seen)) == 80
        assert min(seen) > epoch_of(clock())
    finally:
        db.dispose()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.booleans()), max_size=20))
def test_the_sql_store_and_its_in_memory_twin_agree(ops: list[tuple[int, bool]]) -> None:
    engine = make_engine("sqlite://")
    migrate(engine)
    db = Database(engine)
    try:
        sql, memory = SqlEpochStore(db), MemoryEpochStore()
        for floor, step in ops:
            assert sql.advance(floor, step=step) == memory.advance(floor, step=step)
    finally:
        db.dispose()


def test_the_migration_upgrades_an_existing_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0003")
    migrate(engine)
    names = set(sa.inspect(engine).get_table_names())
    assert {"controller_state", "issued_grants"} <= names
    columns = {c["name"] for c in sa.inspect(engine).get_columns("enrollments")}
    assert "retired_at" in columns
    engine.dispose()


def test_59_posture_flips_in_7_seconds_cost_at_most_5_bumps() -> None:
    limiter = BumpLimiter()  # burst 3, then one per 5 s
    now, bumps, pending_until = 0.0, 0, None
    for n in range(59):
        now = n * 7.0 / 59
        if pending_until is not None and now >= pending_until:
            limiter.fired("alice", pending_until)
            bumps, pending_until = bumps + 1, None
        delay = limiter.offer("alice", now)
        if delay is None:
            bumps += 1
        elif delay > 0:
            pending_until = now + delay
    assert bumps <= 5
    assert pending_until is not None  # the last change is still owed a bump: not dropped
    assert limiter.offer("bob", now) is None  # other endpoints are not held back
