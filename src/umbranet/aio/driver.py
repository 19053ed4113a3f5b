"""Driving sans-IO machines from asyncio: one loop timer per machine, armed lazily.

Every machine in `proto/` and the router's switch says when it next needs time with
`poll_timeout() -> Deadline | None` and takes it in `handle_timeout(now)`. A shell drives a
machine in four steps after each input (aioquic's loop, written once here): feed the input,
deliver the machine's events, write what `poll_transmit()` returns, then `MachineTimer.arm`
with the new deadline.

Arming is cheap on the data path: a deadline that moved later (a keepalive pushed back by
traffic) keeps the timer already armed; the early wake-up finds nothing due, and the
machine's next `poll_timeout` re-arms it. Only an earlier deadline replaces the loop timer,
unless the machine says its earliest deadline went away (`move`): a deadline that recurs for
every stream (the cork) would otherwise wake the process for nothing each time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from umbranet.clock import Clock, Deadline, SystemClock

__all__ = ["MachineTimer"]


class MachineTimer:
    """The one loop timer of one machine. `fire` runs the machine's `handle_timeout`."""

    __slots__ = ("_at", "_clock", "_fire", "_handle", "_loop", "_mono")

    def __init__(self, clock: Clock, fire: Callable[[], None]) -> None:
        self._clock = clock
        # A delay needs only the monotonic reading: the real clock's `now()` also reads the
        # wall clock and builds a datetime, and timers are armed several times per dial.
        self._mono: Callable[[], float] | None = (
            time.monotonic if type(clock) is SystemClock else None
        )
        self._fire = fire
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def arm(self, deadline: Deadline | None) -> None:
        """Make sure the timer fires no later than `deadline` (None: nothing to wait for)."""
        if deadline is None:
            self.cancel()
            return
        if self._handle is not None and self._at <= deadline.at:
            return
        if self._handle is not None:
            self._handle.cancel()
        mono = self._mono() if self._mono is not None else self._clock.now().mono
        delay = max(0.0, deadline.at - mono)
        self._at = deadline.at
        self._handle = self._loop.call_later(delay, self._fired)

    def move(self, deadline: Deadline | None) -> None:
        """Fire at `deadline` even if that is later than the timer is armed for: the
        machine's earliest deadline went away (a wake-up then would find nothing due)."""
        if self._handle is not None and self._at == (deadline.at if deadline else None):
            return
        self.cancel()
        self.arm(deadline)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def armed_at(self) -> float | None:
        """The monotonic moment the timer fires, for tests and statistics."""
        return self._at if self._handle is not None else None

    def _fired(self) -> None:
        self._handle = None
        self._fire()
