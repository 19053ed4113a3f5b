"""The revocation epoch and its push channel to routers and endpoints.

Whenever access may have been removed (an identity disabled, a service deleted, a policy
changed), the controller bumps the *epoch* and pushes it to every subscriber. Tickets carry
the epoch they were issued in; a router refuses tickets from an older epoch (the endpoint
fetches a fresh one, which the controller grants only if still allowed), and re-checks its
live circuits and bindings with the controller, closing those no longer allowed. Existing
grants keep working while the controller is down: nothing changes the epoch then.

The epoch is derived from the clock (0.1 s units) and only ever increases, so a restarted
controller never goes back in time and tickets from before a restart are merely refreshed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

log = logging.getLogger("umbranet.controller.events")

_QUEUE_LIMIT = 64


@dataclass(frozen=True, slots=True)
class EpochEvent:
    """Access may have been removed: re-check everything issued before `epoch`."""

    epoch: int
    reason: str


def epoch_of(now: datetime) -> int:
    return int(now.timestamp() * 10)


class EventHub:
    """Fan-out of epoch events to subscribers on the server's event loop (thread-safe)."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.epoch = epoch_of(clock())
        self._subscribers: dict[asyncio.Queue[EpochEvent], asyncio.AbstractEventLoop] = {}

    def bump(self, reason: str) -> int:
        """Start a new epoch and push it; callable from any thread (routes run in a pool)."""
        with self._lock:
            self.epoch = max(self.epoch + 1, epoch_of(self._clock()))
            event = EpochEvent(self.epoch, reason)
            subscribers = list(self._subscribers.items())
        log.info("epoch %d: %s (%d subscribers)", event.epoch, reason, len(subscribers))
        for queue, loop in subscribers:
            loop.call_soon_threadsafe(_offer, queue, event)
        return event.epoch

    def subscribe(self) -> asyncio.Queue[EpochEvent]:
        """A queue receiving every later event; call `unsubscribe` when done."""
        queue: asyncio.Queue[EpochEvent] = asyncio.Queue(_QUEUE_LIMIT)
        with self._lock:
            self._subscribers[queue] = asyncio.get_running_loop()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[EpochEvent]) -> None:
        with self._lock:
            self._subscribers.pop(queue, None)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


def _offer(queue: asyncio.Queue[EpochEvent], event: EpochEvent) -> None:
    """A slow subscriber only needs the newest epoch: drop the oldest rather than block."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(event)
