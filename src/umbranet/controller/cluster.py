"""Several controller replicas on one PostgreSQL database: one epoch, one periodic clock.

*Epoch fan-out.* `announce` sends each bump with ``NOTIFY umbra_epoch`` inside the bump's
transaction, so PostgreSQL delivers it when, and only when, the epoch row commits, to every
session listening, in commit order (the epoch row's lock makes that epoch order).
`EpochListener` is a thread per replica holding one connection that ``LISTEN``s and feeds
every announcement into the replica's `EventHub`, which pushes it to its routers and
endpoints. A listener that lost its connection reconnects and compares the stored epoch with
its own: announcements missed meanwhile become one unscoped event (re-check everything), and
every `POLL_SECONDS` it does the same check while connected, so a lost notification costs at
most that much delay, never a missed revocation.

*Once per cluster.* `ClusterLease` is a session advisory lock on a connection of its own:
the replica holding it runs the periodic jobs (posture clock, ephemeral removals), the others
wait; if the holder dies its connection closes, the lock is released and another replica
takes it at its next tick. On SQLite (one process) the lease is always held.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from umbranet.controller.events import EpochEvent, EventHub
from umbranet.controller.store import Database

__all__ = [
    "CHANNEL",
    "LEASE_PERIODIC",
    "MAX_PAYLOAD",
    "POLL_SECONDS",
    "ClusterLease",
    "EpochListener",
    "announce",
    "decode_event",
    "encode_event",
]

log = logging.getLogger("umbranet.controller.cluster")

CHANNEL = "umbra_epoch"
MAX_PAYLOAD = 7900
"""PostgreSQL refuses NOTIFY payloads of 8000 bytes or more."""
POLL_SECONDS = 5.0
"""How often a listener compares the stored epoch with its own (lost-notification bound)."""
LEASE_PERIODIC = 0x756D6272_61000002
"""Advisory lock key of the periodic jobs ("umbra" in ASCII, then a number)."""
_RETRY_SECONDS = 1.0
_WAIT_SECONDS = 0.25
_DRAIN_SECONDS = 0.1
_EPOCH_ROW = "epoch"


def encode_event(event: EpochEvent) -> str:
    """The event as a NOTIFY payload, made to fit: first the identities go (the receivers then
    re-check everything: more work, never less), then revoked keys beyond what fits (their
    tickets are still refused by the re-check; only the link-closing hint is lost)."""
    data: dict[str, Any] = {"e": event.epoch, "r": event.reason[:200]}
    if event.identities:
        data["i"] = list(event.identities)
    if event.revoked_keys:
        data["k"] = list(event.revoked_keys)
    text = json.dumps(data, separators=(",", ":"))
    if len(text.encode()) > MAX_PAYLOAD:
        data.pop("i", None)
        text = json.dumps(data, separators=(",", ":"))
    while len(text.encode()) > MAX_PAYLOAD and data.get("k"):
        data["k"] = data["k"][: len(data["k"]) // 2]
        text = json.dumps(data, separators=(",", ":"))
    return text


def decode_event(payload: str) -> EpochEvent | None:
    """The announced event, or None for a payload this version cannot read."""
    try:
        data = json.loads(payload)
        return EpochEvent(
            int(data["e"]),
            str(data.get("r", "")),
            tuple(str(i) for i in data.get("i", ())),
            tuple(str(k) for k in data.get("k", ())),
        )
    except (ValueError, KeyError, TypeError):
        return None


def announce(session: Session, event: EpochEvent) -> None:
    """NOTIFY the event in the session's transaction (delivered at commit, if it commits)."""
    session.execute(sa.select(sa.func.pg_notify(CHANNEL, encode_event(event))))


def connect_args(db: Database) -> dict[str, Any]:
    """What psycopg.connect needs for the engine's URL, as SQLAlchemy's dialect builds it
    (so a multi-host URL, ``?host=a:5432&host=b:5432&target_session_attrs=read-write``,
    reaches libpq as ``host=a,b port=5432,5432``)."""
    args, params = db.engine.dialect.create_connect_args(db.engine.url)
    if args:
        params["conninfo"] = args[0]
    params.pop("context", None)  # SQLAlchemy's type adapters: not for this raw connection
    params.setdefault("connect_timeout", 5)  # an unreachable host must not hang the thread
    return dict(params)


class EpochListener:
    """``listener.start()`` ... ``listener.stop()``: other replicas' bumps into `hub`."""

    def __init__(self, db: Database, hub: EventHub, poll: float = POLL_SECONDS) -> None:
        self._db = db
        self._hub = hub
        self._poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.received = 0
        self.caught_up = 0
        self.reconnects = 0
        self.connected = threading.Event()

    def statistics(self) -> dict[str, int]:
        return {
            "received": self.received,
            "caught_up": self.caught_up,
            "reconnects": self.reconnects,
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="epoch-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg  # the controller extra installs it; only PostgreSQL homes get here

        while not self._stop.is_set():
            try:
                with psycopg.connect(**connect_args(self._db), autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._catch_up(conn, "caught up after (re)connecting to the database")
                    self.connected.set()
                    checked = time.monotonic()
                    while not self._stop.is_set():
                        # Short waits so `stop` is prompt; the stored epoch every `poll`.
                        for note in conn.notifies(timeout=_WAIT_SECONDS):
                            self._deliver(note.payload)
                        if time.monotonic() - checked >= self._poll:
                            self._catch_up(conn, "caught up with the stored epoch")
                            checked = time.monotonic()
            except (psycopg.Error, sa.exc.SQLAlchemyError) as exc:
                self.connected.clear()
                self.reconnects += 1
                log.warning("epoch listener lost the database (%s); retrying", exc)
                self._stop.wait(_RETRY_SECONDS)

    def _deliver(self, payload: str) -> None:
        event = decode_event(payload)
        if event is None:
            log.warning("ignored an epoch announcement this version cannot read")
            return
        if self._hub.receive(event):
            self.received += 1

    def _catch_up(self, conn: Any, reason: str) -> None:
        """Compare the stored epoch with the hub's; behind means announcements were lost.

        Read on the listening connection, then take the announcements already on their way
        (those of bumps committed before the read) first: a catch-up must not overtake a
        scoped event it could have delivered, and lose its identities and revoked keys.
        """
        row = conn.execute(
            "SELECT value FROM controller_state WHERE name = %s", (_EPOCH_ROW,)
        ).fetchone()
        stored = int(row[0]) if row else 0
        for note in conn.notifies(timeout=_DRAIN_SECONDS):
            self._deliver(note.payload)
        if stored > self._hub.epoch and self._hub.receive(EpochEvent(stored, reason)):
            self.caught_up += 1


class ClusterLease:
    """Whether this replica runs the cluster's periodic jobs now (see the module doc).

    `held()` is called before each tick from the job's thread; it takes the lock if free,
    and checks a held lock's connection is still alive (a dead connection means the lock is
    gone and perhaps taken by another replica).
    """

    def __init__(self, db: Database, key: int = LEASE_PERIODIC) -> None:
        self._db = db
        self._key = key
        self._lock = threading.Lock()
        self._connection: sa.Connection | None = None

    @property
    def shared(self) -> bool:
        return self._db.engine.dialect.name == "postgresql"

    def held(self) -> bool:
        if not self.shared:
            return True
        with self._lock:
            try:
                if self._connection is not None:
                    self._connection.execute(sa.text("SELECT 1"))
                    self._connection.commit()  # never sit idle in a transaction
                    return True
                connection = self._db.engine.connect()
                got = connection.execute(
                    sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}
                ).scalar()
                connection.commit()
                if got:
                    self._connection = connection
                    log.info("this replica now runs the cluster's periodic jobs")
                    return True
                connection.close()
                return False
            except sa.exc.SQLAlchemyError as exc:
                log.warning("cluster lease lost (%s)", exc)
                self._drop()
                return False

    def release(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # Closing the connection releases the session lock; invalidate so the pool never
            # hands out a connection that might still hold it.
            try:
                connection.invalidate()
                connection.close()
            except sa.exc.SQLAlchemyError:
                pass
