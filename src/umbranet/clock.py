"""Time for every machine: one reading carries both a monotonic and a wall-clock value.

Deadlines (keepalives, handshake and dial timeouts, cork delays) must not jump when the
system clock is stepped, so they use `Instant.mono`; certificates and tickets name wall-clock
moments, so their checks use `Instant.wall`. Machines never read the clock themselves: the
shell passes `now`, and tests pass a fake (`umbranet.testing.clock.FakeClock`) that moves only
when told, so whole networks run in virtual time.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

__all__ = ["Clock", "Deadline", "Instant", "SystemClock", "deadline", "system_clock"]


class Instant(NamedTuple):
    """One reading of the clock: `mono` seconds for deadlines, `wall` for certificates.

    A named tuple, not a frozen dataclass: shells make one per read and machines one
    `Deadline` per poll, and a tuple is built in half the time (immutable and hashable alike).
    """

    mono: float
    wall: datetime

    @property
    def unix(self) -> float:
        """Wall-clock seconds since the epoch (what tickets and certificates carry)."""
        return self.wall.timestamp()

    def later(self, seconds: float) -> float:
        """The monotonic moment `seconds` from this one (a deadline's `at`)."""
        return self.mono + seconds


class Deadline(NamedTuple):
    """When a machine next needs `handle_timeout`, and why (for logs and traces)."""

    at: float  # monotonic seconds, comparable with Instant.mono
    reason: str


# `deadline((at, reason))` builds a Deadline with no Python frame (the named tuple's own
# `__new__` is a Python function): for the polls that run after every read and dial.
deadline = functools.partial(tuple.__new__, Deadline)


class Clock(Protocol):
    """Where shells get `now`."""

    def now(self) -> Instant:
        """The current instant."""


class SystemClock:
    """The real clock: `time.monotonic()` and the UTC wall clock.

    The wall clock is read at most once per `WALL_EVERY` seconds: shells read the clock
    once per socket read, an aware `datetime` costs ten times a monotonic reading, and
    everything that uses the wall clock (certificates, tickets, key ages) works in seconds
    with minutes of skew allowed. `mono` is always read fresh: deadlines use it.
    """

    __slots__ = ("_next_wall", "_wall")

    WALL_EVERY = 0.001

    def __init__(self) -> None:
        self._next_wall = -1.0  # the monotonic moment the wall clock is next read
        self._wall = datetime.now(UTC)

    def now(self) -> Instant:
        mono = _monotonic()
        # A slot, not the class constant: reading a class attribute through an instance is
        # not specialised by the interpreter, and shells read the clock once per socket read.
        if mono >= self._next_wall:
            self._next_wall, self._wall = mono + self.WALL_EVERY, datetime.now(UTC)
        # tuple.__new__ directly: the named tuple's own __new__ is one more Python call.
        return _new_instant(Instant, (mono, self._wall))

    def __call__(self) -> datetime:
        """The wall clock alone, for code that checks certificates and tickets."""
        return datetime.now(UTC)


_new_instant = tuple.__new__
_monotonic = time.monotonic  # one global lookup per reading, not a module attribute too
system_clock = SystemClock()


def earliest(*deadlines: Deadline | None) -> Deadline | None:
    """The first of several deadlines (None when there is none)."""
    best: Deadline | None = None
    for deadline in deadlines:
        if deadline is not None and (best is None or deadline.at < best.at):
            best = deadline
    return best
