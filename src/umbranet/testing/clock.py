"""A clock tests move by hand: virtual time for machines, shells and whole simulated networks.

It implements `umbranet.clock.Clock` (`now() -> Instant`) and is also callable for the wall
clock alone, so it can stand in wherever a component takes `Callable[[], datetime]` (the
controller, caches). `advance` moves both readings together; `step_wall` moves only the wall
clock, as an administrator or NTP stepping the system clock would, and never moves `mono`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from umbranet.clock import Instant

__all__ = ["FakeClock"]


class FakeClock:
    """Starts at a whole second of the real current time (or `start`), mono at `mono`."""

    def __init__(self, start: datetime | None = None, mono: float = 1000.0) -> None:
        self.wall = start or datetime.now(UTC).replace(microsecond=0)
        self.mono = mono

    def now(self) -> Instant:
        return Instant(self.mono, self.wall)

    def __call__(self) -> datetime:
        return self.wall

    def advance(self, delta: float | timedelta) -> None:
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if seconds < 0:
            raise ValueError("time only moves forward; use step_wall to step the wall clock")
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)

    def step_wall(self, delta: timedelta) -> None:
        """Step the wall clock (either way) without moving monotonic time."""
        self.wall += delta
