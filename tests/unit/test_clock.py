"""The real clock: deadlines read a fresh monotonic value every time; the wall clock, read
at most once a millisecond, still moves on and is never behind by more than that."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from umbranet.clock import SystemClock


def test_every_reading_has_a_fresh_monotonic_value() -> None:
    clock = SystemClock()
    first = clock.now()
    while (second := clock.now()).mono == first.mono:  # bounded: the clock moves
        pass
    assert second.mono > first.mono


def test_the_wall_clock_moves_on_and_is_at_most_one_interval_behind() -> None:
    clock = SystemClock()
    before = datetime.now(UTC)
    first = clock.now()
    assert first.wall >= before and first.wall.tzinfo is UTC
    time.sleep(2 * SystemClock.WALL_EVERY)
    second = clock.now()
    assert second.wall > first.wall
    assert datetime.now(UTC) - second.wall <= timedelta(seconds=1)  # fresh, not a cache
