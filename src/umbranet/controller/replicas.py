"""Which replicas are running, so clients can fail over to them (docs/ha.md).

Every replica records the URL it advertises in ``controller_replicas`` and refreshes
``seen_at`` every `HEARTBEAT` seconds from a thread; a replica not seen for `STALE` seconds
(killed, partitioned from the database) drops out of the list, and one that stops cleanly
deletes its row. The list (this replica first) goes to every client in the event stream's
``hello`` and from ``GET /v1/controllers``; clients try the URLs in turn (`client.transport`).

The list is not signed: a client verifies every URL it uses against the bundle's CA with
host name checking, so a wrong entry can only name a server that fails that check (tried and
skipped), never one the client would trust. On SQLite the list is just this controller.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa

from umbranet.controller.store import Database
from umbranet.controller.store.cluster_models import ControllerReplica

__all__ = ["HEARTBEAT", "STALE", "ReplicaDirectory"]

log = logging.getLogger("umbranet.controller.replicas")

HEARTBEAT = 5.0
STALE = 15.0
MAX_LISTED = 32


class ReplicaDirectory:
    """This replica's row and the cached list of live ones; `start` ... `stop`."""

    def __init__(
        self, db: Database, url: str, clock: Callable[[], datetime], interval: float = HEARTBEAT
    ) -> None:
        self.db = db
        self.url = url
        self._clock = clock
        self._interval = interval
        self._started = clock()
        self._live: list[str] = [url]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def live(self) -> list[str]:
        """Live replicas' URLs, this one first (as of the last heartbeat)."""
        return list(self._live)

    def heartbeat(self) -> list[str]:
        """Refresh this replica's row and read the live list (one transaction)."""
        now = self._clock()
        table = ControllerReplica
        with self.db.session() as session:
            updated = session.execute(
                sa.update(table)
                .where(table.url == self.url)
                .values(seen_at=now)
                .execution_options(synchronize_session=False)
            )
            if getattr(updated, "rowcount", 0) != 1:
                session.add(ControllerReplica(url=self.url, started_at=self._started, seen_at=now))
            since = now - timedelta(seconds=STALE)
            # Replicas gone for a day (decommissioned) leave the table; a restart re-adds.
            session.execute(sa.delete(table).where(table.seen_at < now - timedelta(days=1)))
            urls = session.scalars(
                sa.select(table.url)
                .where(table.seen_at >= since)
                .order_by(table.started_at, table.url)
                .limit(MAX_LISTED)
            ).all()
        self._live = [self.url, *(u for u in urls if u != self.url)]
        return self.live()

    def leave(self) -> None:
        """Stopping cleanly: drop out of the list at once (clients stop trying us)."""
        with self.db.session() as session:
            session.execute(sa.delete(ControllerReplica).where(ControllerReplica.url == self.url))

    def start(self) -> None:
        self._beat()
        self._thread = threading.Thread(target=self._run, name="replica-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.leave()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("could not remove this replica from the list: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._beat()

    def _beat(self) -> None:
        try:
            self.heartbeat()
        except sa.exc.SQLAlchemyError as exc:
            # The database is away: keep the last list; other replicas drop us when stale.
            self.failures += 1
            log.warning("replica heartbeat failed: %s", exc)
