"""The audit log's hash chain: what a row's hash covers, and how a chain is checked.

Each ``audit_events`` row stores ``prev_hash`` (the hash of the row appended before it) and
``row_hash`` = SHA-256 over a fixed serialisation of ``prev_hash`` and the row's own fields,
its id included. Editing any field of a row breaks its own hash; deleting or reordering rows
breaks the next row's ``prev_hash``; deleting the newest rows is caught by the head pointer
(``controller_state`` row ``audit_head``, the id of the newest chained row). Someone who can
rewrite the whole table *and* the head can rebuild a consistent chain: keep the head hash
that `verify` prints somewhere else (a ticket, a log shipper) to anchor it.

Pure functions only (no session): the store appends (`Store.audit`), the migration chains the
rows that existed before it, and `umbra audit verify` calls `verify`. The serialisation is
versioned by `_PREFIX` and must never change for rows already written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["GENESIS", "HEAD", "ChainRow", "ChainVerdict", "row_hash", "verify"]

GENESIS = "0" * 64
"""``prev_hash`` of the first row of a chain."""
HEAD = "audit_head"
"""The ``controller_state`` row holding the id of the newest chained row (0: none yet)."""
_PREFIX = "umbra-audit-v1"


@dataclass(frozen=True, slots=True)
class ChainRow:
    """The fields of one audit row that its hash covers, plus the stored hashes."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: Any
    decision_id: str | None
    prev_hash: str | None
    row_hash: str | None


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    """`ok`, or the first row (`broken_at`, None when the head itself is wrong) and why."""

    ok: bool
    rows: int
    head_hash: str
    broken_at: int | None = None
    reason: str = ""


def row_hash(
    prev_hash: str,
    row_id: int,
    *,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    detail: Any,
    decision_id: str | None,
) -> str:
    """The hash of one row chained after `prev_hash`."""
    moment = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = json.dumps(
        [_PREFIX, prev_hash, row_id, moment, actor, action, target, detail, decision_id],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(body.encode("ascii")).hexdigest()


def verify(rows: Iterable[ChainRow], head: int) -> ChainVerdict:
    """Check `rows` (ascending id, every row of the table) against each other and against
    the stored head id. Stops at the first broken row."""
    prev = GENESIS
    count = 0
    last_id = 0
    for row in rows:
        count += 1
        last_id = row.id
        if row.row_hash is None or row.prev_hash is None:
            return ChainVerdict(False, count, prev, row.id, "row has no hash (not chained)")
        if row.prev_hash != prev:
            return ChainVerdict(
                False, count, prev, row.id, "prev_hash does not match the row before it "
                "(a row before it was deleted, inserted or edited)",
            )  # fmt: skip
        expected = row_hash(
            prev, row.id, at=row.at, actor=row.actor, action=row.action, target=row.target,
            detail=row.detail, decision_id=row.decision_id,
        )  # fmt: skip
        if expected != row.row_hash:
            return ChainVerdict(False, count, prev, row.id, "row_hash does not match its fields")
        prev = row.row_hash
    if last_id != head:
        reason = (
            f"the newest row is {last_id} but the chain's head is {head} "
            "(the newest rows were deleted)"
            if last_id < head
            else f"rows after the chain's head {head} (appended outside the chain)"
        )
        return ChainVerdict(False, count, prev, None, reason)
    return ChainVerdict(True, count, prev)
