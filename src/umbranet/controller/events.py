"""The revocation epoch and its push channel to routers and endpoints.

Whenever access may have been removed (an identity disabled, a service deleted, a policy
changed), the controller bumps the *epoch* and pushes it to every subscriber. Tickets carry
the epoch they were issued in; a router refuses tickets from an older epoch (the endpoint
fetches a fresh one, which the controller grants only if still allowed), and re-checks its
live circuits and bindings with the controller, closing those no longer allowed. Existing
grants keep working while the controller is down: nothing changes the epoch then.

The epoch only ever increases, across restarts and clock steps back: it is stored
(`EpochStore`) and each bump is ``max(stored + 1, clock in 0.1 s units)``, so a controller
restarted with its clock set back neither reuses an epoch nor makes every ticket stale. An
event may name the identities it concerns (one endpoint's posture moved): routers then
re-check only their grants.

`EpochBus` is the interface the API uses; `EventHub` implements it: in-process fan-out of a
stored epoch. On PostgreSQL the store also announces each bump with ``NOTIFY`` in the bump's
transaction and `controller.cluster.EpochListener` feeds every other replica's announcements
into its hub (`EventHub.receive`), so one epoch holds for the whole cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from umbranet.controller.logfmt import safe
from umbranet.controller.store import ControllerState, Database, Store

__all__ = [
    "CLOSING",
    "EpochBus",
    "EpochEvent",
    "BumpLimiter",
    "EpochStore",
    "EventHub",
    "MemoryEpochStore",
    "SqlEpochStore",
    "epoch_of",
]

log = logging.getLogger("umbranet.controller.events")

_QUEUE_LIMIT = 64
MAX_REVOKED_KEYS = 1024
"""Revoked certificate keys remembered for `hello` (newest kept)."""
_EPOCH = "epoch"


@dataclass(frozen=True, slots=True)
class EpochEvent:
    """Access may have been removed: re-check what was issued before `epoch`.

    `identities` (SPIFFE IDs) limits the re-check to their grants; empty means everything.
    `revoked_keys` are key fingerprints of certificates revoked now: routers close links
    made with them.
    """

    epoch: int
    reason: str
    identities: tuple[str, ...] = ()
    revoked_keys: tuple[str, ...] = ()


CLOSING = EpochEvent(-1, "controller stopping")
"""Pushed to every subscriber by `EventHub.close`: the stream ends (clients reconnect)."""


def epoch_of(now: datetime) -> int:
    return int(now.timestamp() * 10)


class EpochStore(Protocol):
    """Where the epoch survives restarts; `advance` must be atomic across writers."""

    def advance(
        self,
        floor: int,
        *,
        step: bool,
        event: EpochEvent | None = None,
        session: Session | None = None,
    ) -> int:
        """Set the epoch to ``max(stored + (1 if step else 0), floor)`` and return it.

        With `session`, inside that session's transaction (the change causing the bump), so
        the epoch moves if and only if the change commits; `event` (its epoch not yet known)
        is what a store shared by several replicas announces to the others.
        """
        ...


class MemoryEpochStore:
    """The in-memory twin of `SqlEpochStore` (tests, tools): forgets on restart."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def advance(
        self,
        floor: int,
        *,
        step: bool,
        event: EpochEvent | None = None,
        session: Session | None = None,
    ) -> int:
        self.value = max(self.value + (1 if step else 0), floor)
        return self.value


class SqlEpochStore:
    """The epoch in the ``controller_state`` table (one row, ``name = 'epoch'``).

    One conditional UPDATE: the row lock (PostgreSQL) or the write lock (SQLite, BEGIN
    IMMEDIATE) makes concurrent bumps from several workers or replicas each get a distinct,
    larger value, committed in epoch order. Plain SQL (CASE, no upsert dialects) so every
    backend runs it. On PostgreSQL the same transaction sends the event with ``NOTIFY``
    (`controller.cluster`), which the server delivers at commit and only then, to every
    replica listening.
    """

    def __init__(
        self, db: Database, announce: Callable[[Session, EpochEvent], None] | None = None
    ) -> None:
        self._db = db
        self._announce = announce

    def advance(
        self,
        floor: int,
        *,
        step: bool,
        event: EpochEvent | None = None,
        session: Session | None = None,
    ) -> int:
        if session is not None:
            value = self._advance_in(session, floor, step)
            if value is None:
                # No row yet (a database older than the first start): insert it here; a
                # concurrent insert makes this transaction fail, which the caller reports.
                value = max(1 if step else 0, floor)
                session.execute(sa.insert(ControllerState).values(name=_EPOCH, value=value))
            self._announce_in(session, value, event)
            return value
        for _ in range(3):  # the row may be inserted by another writer between our two steps
            with self._db.session() as own:
                found = self._advance_in(own, floor, step)
                if found is not None:
                    self._announce_in(own, found, event)
                    return found
            try:
                with self._db.session() as own:
                    # No row yet means a stored 0, as in the in-memory twin.
                    value = max(1 if step else 0, floor)
                    own.execute(sa.insert(ControllerState).values(name=_EPOCH, value=value))
                    self._announce_in(own, value, event)
                    return value
            except sa.exc.IntegrityError:
                continue
        raise RuntimeError("could not store the epoch")

    def read(self) -> int:
        """The stored epoch (0 if none yet)."""
        with self._db.session() as session:
            value = session.scalar(
                sa.select(ControllerState.value).where(ControllerState.name == _EPOCH)
            )
            return int(value or 0)

    @staticmethod
    def _advance_in(session: Session, floor: int, step: bool) -> int | None:
        row = ControllerState
        candidate = row.value + (1 if step else 0)
        result = session.execute(
            sa.update(row)
            .where(row.name == _EPOCH)
            .values(value=sa.case((candidate > floor, candidate), else_=floor))
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            return None
        value = session.scalar(sa.select(row.value).where(row.name == _EPOCH))
        assert value is not None
        return int(value)

    def _announce_in(self, session: Session, value: int, event: EpochEvent | None) -> None:
        if self._announce is not None and event is not None:
            self._announce(session, dataclasses.replace(event, epoch=value))


class EpochBus(Protocol):
    """What the API needs of the epoch: read it, bump it, follow it."""

    @property
    def epoch(self) -> int: ...

    @property
    def subscribers(self) -> int: ...

    def bump(
        self,
        reason: str,
        identities: Sequence[str] = (),
        revoked_keys: Sequence[str] = (),
        *,
        store: Store | None = None,
    ) -> int: ...

    def revoked_keys(self) -> list[str]: ...

    def subscribe(self) -> asyncio.Queue[EpochEvent]: ...

    def unsubscribe(self, queue: asyncio.Queue[EpochEvent]) -> None: ...


class EventHub:
    """Fan-out of epoch events to subscribers on the server's event loop (thread-safe)."""

    def __init__(self, clock: Callable[[], datetime], store: EpochStore | None = None) -> None:
        self._clock = clock
        self._store: EpochStore = store if store is not None else MemoryEpochStore()
        self._lock = threading.Lock()
        # Never below what was stored, nor below the clock: stored at once, so a later
        # restart with the clock set back starts from here, not from the clock. Announced
        # (replicas on PostgreSQL): this usually moves the shared epoch, and the other
        # replicas should not issue tickets of the old one until their next catch-up.
        started = EpochEvent(0, "a controller replica started")
        self._epoch = self._store.advance(epoch_of(clock()), step=False, event=started)
        self._delivered = self._epoch
        self._subscribers: dict[asyncio.Queue[EpochEvent], asyncio.AbstractEventLoop] = {}
        # Recently revoked certificate keys, oldest first, re-sent in every `hello` so a
        # router that missed the event still closes links made with them. In memory: a
        # restart forgets them (routers still refuse their tickets: the re-check denies them).
        self._revoked: dict[str, None] = {}

    @property
    def epoch(self) -> int:
        return self._epoch

    def stored_epoch(self) -> int:
        """The epoch as stored (shared by every replica), never below this hub's: what a
        client that reconnects compares with the last epoch it saw. Reads the database."""
        read = getattr(self._store, "read", None)
        stored = int(read()) if callable(read) else 0
        return max(self._epoch, stored)

    def revoked_keys(self) -> list[str]:
        with self._lock:
            return list(self._revoked)

    def bump(
        self,
        reason: str,
        identities: Sequence[str] = (),
        revoked_keys: Sequence[str] = (),
        *,
        store: Store | None = None,
    ) -> int:
        """Start a new epoch, store it and push it; callable from any thread.

        With `store`, the epoch advances inside the store's transaction (the change causing
        it) and is pushed when that transaction commits; nothing is pushed if it rolls back.
        Call it last in the transaction: on PostgreSQL it holds the epoch row's lock until
        commit, so concurrent bumps commit in epoch order.
        """
        template = EpochEvent(0, reason, tuple(identities), tuple(revoked_keys))
        floor = max(self._epoch + 1, epoch_of(self._clock()))
        if store is None:
            value = self._store.advance(floor, step=True, event=template)
            self.receive(dataclasses.replace(template, epoch=value))
            return value
        value = self._store.advance(floor, step=True, event=template, session=store.session)
        event = dataclasses.replace(template, epoch=value)
        sa.event.listen(store.session, "after_commit", lambda _s: self.receive(event), once=True)
        return value

    def receive(self, event: EpochEvent) -> bool:
        """Push `event` to this process's subscribers unless a later epoch went out already
        (False). Bumps made here and, on PostgreSQL, those another replica announced arrive
        in epoch order, so skipping an older one never skips a re-check."""
        with self._lock:
            if event.epoch <= self._delivered:
                return False
            self._delivered = event.epoch
            self._epoch = max(self._epoch, event.epoch)
            for key in event.revoked_keys:
                self._revoked[key] = None
            while len(self._revoked) > MAX_REVOKED_KEYS:
                del self._revoked[next(iter(self._revoked))]
            subscribers = list(self._subscribers.items())
        log.info("epoch %d: %s (%d subscribers)", event.epoch, safe(event.reason), len(subscribers))
        for queue, loop in subscribers:
            loop.call_soon_threadsafe(_offer, queue, event)
        return True

    def subscribe(self) -> asyncio.Queue[EpochEvent]:
        """A queue receiving every later event; call `unsubscribe` when done."""
        queue: asyncio.Queue[EpochEvent] = asyncio.Queue(_QUEUE_LIMIT)
        with self._lock:
            self._subscribers[queue] = asyncio.get_running_loop()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[EpochEvent]) -> None:
        with self._lock:
            self._subscribers.pop(queue, None)

    def close(self) -> None:
        """End every subscriber's stream (`CLOSING`): the server is stopping, and streams
        never end on their own."""
        with self._lock:
            subscribers = list(self._subscribers.items())
        for queue, loop in subscribers:
            loop.call_soon_threadsafe(_offer, queue, CLOSING)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


class BumpLimiter:
    """Epoch bumps per key (an endpoint's posture): a burst of `burst`, then one per
    `interval` seconds (a token bucket).

    An endpoint flipping its posture report must not make every router re-check and every
    ticket go stale many times a second, while a real change or two (a process stops, then
    starts again) must still take effect at once. Bumps over the limit are not dropped
    (access may have been lost): they are coalesced into one, due when the next token is.
    """

    def __init__(self, interval: float = 5.0, burst: int = 3, memory: int = 10_000) -> None:
        self.interval = interval
        self.burst = burst
        self._memory = memory
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self.deferred = 0

    def offer(self, key: str, now: float) -> float | None:
        """None: bump now. Otherwise the seconds until the deferred bump is due, or 0.0 if
        one is already pending for `key` (nothing more to schedule)."""
        with self._lock:
            tokens = self._refill(key, now)
            if tokens >= 1 and key not in self._pending:
                self._buckets[key] = (tokens - 1, now)
                return None
            self.deferred += 1
            if key in self._pending:
                return 0.0
            self._pending.add(key)
            return max(0.0, (1 - tokens) * self.interval)

    def fired(self, key: str, now: float) -> None:
        """The deferred bump for `key` happened at `now` (it spends a token)."""
        with self._lock:
            self._pending.discard(key)
            self._buckets[key] = (max(0.0, self._refill(key, now) - 1), now)

    def _refill(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        if len(self._buckets) >= self._memory and key not in self._buckets:
            self._buckets.clear()  # forgetting only ever allows more bumps, never fewer
        return min(float(self.burst), tokens + max(0.0, now - at) / self.interval)


def _offer(queue: asyncio.Queue[EpochEvent], event: EpochEvent) -> None:
    """A slow subscriber only needs the newest epoch: drop the oldest rather than block.

    The dropped event may have asked for a full re-check, so after an overflow the newest
    event goes out unscoped (re-check everything): too much work, never too little.
    """
    if queue.full():
        dropped = queue.get_nowait()
        keys = tuple(dict.fromkeys(dropped.revoked_keys + event.revoked_keys))
        event = EpochEvent(event.epoch, event.reason, (), keys)
    queue.put_nowait(event)
