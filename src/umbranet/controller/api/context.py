"""What every route needs: the database, the signing authority, the clock and the counters.

One `AppContext` per app (kept on ``app.state``); tests build it with a fake clock and an
in-memory authority, `controller.server` builds it from the home directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from umbranet.controller.cluster import POLL_SECONDS, ClusterLease, EpochListener, announce
from umbranet.controller.events import BumpLimiter, EventHub, SqlEpochStore
from umbranet.controller.metrics import Metrics
from umbranet.controller.replicas import ReplicaDirectory
from umbranet.controller.service import Authority
from umbranet.controller.service.addresses import OverlaySettings
from umbranet.controller.service.joinkeys import Presence
from umbranet.controller.service.relay import RelayTicketCache
from umbranet.controller.service.tickets import DenyAudit
from umbranet.controller.store import Database, Store
from umbranet.controller.store.db import is_postgresql

__all__ = ["AppContext", "Clock", "system_clock"]

Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware UTC; injected so tests can move time."""


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class AppContext:
    db: Database
    authority: Authority
    clock: Clock = system_clock
    metrics: Metrics = field(default_factory=Metrics)
    deny_audit: DenyAudit = field(default_factory=DenyAudit)
    posture_bumps: BumpLimiter = field(default_factory=BumpLimiter)
    events: EventHub = field(init=False)
    # Who holds the event stream open: how ephemeral (join-key) identities count as online.
    presence: Presence = field(default_factory=Presence)
    # Where overlay addresses come from (network mode).
    overlay: OverlaySettings = field(default_factory=OverlaySettings)
    # Signed relay tickets reused across view requests until near expiry or a new epoch.
    relay_tickets: RelayTicketCache = field(default_factory=RelayTicketCache)
    # Several replicas on PostgreSQL: who runs the periodic jobs, and other replicas' bumps.
    lease: ClusterLease = field(init=False)
    listener: EpochListener | None = field(init=False, default=None)
    # The replicas clients may fail over to (set by `controller.server`; None in tests).
    replicas: ReplicaDirectory | None = None

    def __post_init__(self) -> None:
        shared = is_postgresql(self.db.engine)
        self.events = EventHub(self.clock, SqlEpochStore(self.db, announce if shared else None))
        self.lease = ClusterLease(self.db)
        if shared:
            self.deny_audit.shared = True  # one throttle for every replica

    def start_cluster(self, poll: float = POLL_SECONDS) -> None:
        """Follow other replicas' epoch bumps (PostgreSQL; nothing to follow on SQLite),
        comparing with the stored epoch every `poll` seconds too."""
        if is_postgresql(self.db.engine) and self.listener is None:
            self.listener = EpochListener(self.db, self.events, poll)
            self.listener.start()

    def controllers(self) -> list[str]:
        """URLs of the live replicas, this one first (empty when not known)."""
        return self.replicas.live() if self.replicas is not None else []

    def stop_cluster(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        self.lease.release()

    @contextmanager
    def transaction(self, *, read_only: bool = False) -> Iterator[Store]:
        """A store over one transaction: committed on success, rolled back on error
        (`read_only`: a long read that must not hold SQLite's write lock)."""
        with self.db.session(read_only=read_only) as session:
            yield Store(session)
