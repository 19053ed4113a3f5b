"""Re-checking a router's live grants after the epoch moved: the bookkeeping, without IO.

When the controller announces a new revocation epoch, the router asks it which of the grants
it carries (identity, service, action) are no longer allowed, and closes those. This module
decides *what* to send and *what* to close; the router's shell does the sending.

Rules of this file:
- Grants are deduplicated by (identity, service, action): 2,000 circuits of one dialer to one
  service are one line of a request, and the answer applies to every one of them.
- Unique grants go out in chunks of at most `CHUNK_SIZE` (the controller refuses more than
  `MAX_GRANTS_PER_REQUEST`), so no request grows with the router's load.
- Fail closed: a chunk that failed `MAX_ATTEMPTS` times in a row, or is still unanswered
  `DEADLINE_SECONDS` after the round began, counts as denied, and its circuits close with
  `ErrorCode.RECHECK_FAILED`. A revocation must not be outlived by a controller that answers
  with errors, or by a router whose requests it refuses.
- An epoch that names identities (a posture change of one endpoint) re-checks only their
  grants; one that names none re-checks everything.

Inputs are `handle_answer` / `handle_failure` with `now` (seconds, any monotonic origin);
outputs are `poll_request`, `poll_closures` and `statistics`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from umbranet.wire import ErrorCode

__all__ = [
    "CHUNK_SIZE",
    "DEADLINE_SECONDS",
    "MAX_ATTEMPTS",
    "MAX_GRANTS_PER_REQUEST",
    "Chunk",
    "Closure",
    "GrantKey",
    "RecheckRound",
]

CHUNK_SIZE = 256
"""Unique grants per /v1/recheck request (about 30 KiB of JSON with typical names)."""
MAX_GRANTS_PER_REQUEST = 1024
"""What the controller accepts in one request; larger than `CHUNK_SIZE` for old routers."""
MAX_ATTEMPTS = 2
"""Consecutive failures of one chunk before its grants count as denied."""
DEADLINE_SECONDS = 10.0
"""How long a round may take before whatever is still unanswered counts as denied."""

H = TypeVar("H")


@dataclass(frozen=True, slots=True, order=True)
class GrantKey:
    """One use of a service, as the controller judges it."""

    identity: str  # SPIFFE ID
    service: str
    action: str  # "dial" | "bind"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One request's worth of unique grants; `id` names it in `handle_answer`/`_failure`."""

    id: int
    keys: tuple[GrantKey, ...]

    def triples(self) -> list[tuple[str, str, str]]:
        """The wire form the controller client takes."""
        return [(k.identity, k.service, k.action) for k in self.keys]


@dataclass(frozen=True, slots=True)
class Closure(Generic[H]):
    """Close `handle` (a circuit end or a binding) with `code` and `reason`."""

    handle: H
    code: ErrorCode
    reason: str


class _State(Enum):
    PENDING = "pending"  # not answered yet; may be (re)sent
    SENT = "sent"  # handed out by poll_request, no answer yet
    DONE = "done"  # answered, or given up on (fail closed)


@dataclass(slots=True)
class _ChunkState:
    keys: tuple[GrantKey, ...]
    state: _State = _State.PENDING
    failures: int = 0
    last_error: str = ""


@dataclass(slots=True)
class _Counters:
    grants: int = 0
    unique: int = 0
    skipped: int = 0  # grants of identities the event did not name
    requests: int = 0
    failures: int = 0
    denied: int = 0
    failed_closed: int = 0
    closures: int = 0


class RecheckRound(Generic[H]):
    """One epoch's re-check of the grants a router carries.

    `grants` are (identity, service, action, handle); `only` limits the round to grants of
    those identities (None: all). `now` starts the deadline.
    """

    def __init__(
        self,
        epoch: int,
        grants: Iterable[tuple[str, str, str, H]],
        now: float,
        *,
        only: Collection[str] | None = None,
        chunk_size: int = CHUNK_SIZE,
        max_attempts: int = MAX_ATTEMPTS,
        deadline: float = DEADLINE_SECONDS,
    ) -> None:
        if chunk_size < 1 or max_attempts < 1:
            raise ValueError("chunk_size and max_attempts must be at least 1")
        self.epoch = epoch
        self.deadline = now + deadline
        self._max_attempts = max_attempts
        self._counters = _Counters()
        self._handles: dict[GrantKey, list[H]] = {}
        scope = frozenset(only) if only is not None else None
        for identity, service, action, handle in grants:
            self._counters.grants += 1
            if scope is not None and identity not in scope:
                self._counters.skipped += 1
                continue
            self._handles.setdefault(GrantKey(identity, service, action), []).append(handle)
        keys = sorted(self._handles)
        self._counters.unique = len(keys)
        self._chunks = [
            _ChunkState(tuple(keys[i : i + chunk_size])) for i in range(0, len(keys), chunk_size)
        ]
        self._closures: list[Closure[H]] = []

    # -- outputs -----------------------------------------------------------------------

    def poll_request(self, now: float) -> Chunk | None:
        """The next chunk to send, or None when every chunk is answered or given up on.

        Past the deadline every unanswered chunk is given up on (fail closed) first.
        """
        if now >= self.deadline:
            for index, chunk in enumerate(self._chunks):
                if chunk.state is not _State.DONE:
                    self._give_up(index, "no answer within the re-check deadline")
            return None
        for index, chunk in enumerate(self._chunks):
            if chunk.state is _State.PENDING:
                chunk.state = _State.SENT
                self._counters.requests += 1
                return Chunk(index, chunk.keys)
        return None

    def poll_closures(self) -> list[Closure[H]]:
        """Everything to close so far (denied or not re-checkable); each returned once."""
        out, self._closures = self._closures, []
        self._counters.closures += len(out)
        return out

    def remaining(self, now: float) -> float:
        """Seconds left before the deadline (what one request may take at most)."""
        return max(0.0, self.deadline - now)

    @property
    def done(self) -> bool:
        return all(c.state is _State.DONE for c in self._chunks)

    def statistics(self) -> dict[str, int]:
        c = self._counters
        return {
            "grants": c.grants,
            "unique": c.unique,
            "duplicates": c.grants - c.skipped - c.unique,
            "skipped": c.skipped,
            "chunks": len(self._chunks),
            "requests": c.requests,
            "failures": c.failures,
            "denied": c.denied,
            "failed_closed": c.failed_closed,
            "closures": c.closures,
        }

    # -- inputs ------------------------------------------------------------------------

    def handle_answer(self, chunk_id: int, denied: Mapping[int, str]) -> None:
        """The controller's answer for a chunk: index within the chunk -> reason.

        Indexes outside the chunk are ignored (a confused controller cannot make the router
        close grants it never asked about).
        """
        chunk = self._chunk(chunk_id)
        if chunk is None:
            return
        chunk.state = _State.DONE
        for index, reason in denied.items():
            if 0 <= index < len(chunk.keys):
                self._counters.denied += 1
                self._close(chunk.keys[index], ErrorCode.REVOKED, reason)

    def handle_failure(self, chunk_id: int, error: str) -> None:
        """A request for a chunk failed (refused, timed out, connection lost)."""
        chunk = self._chunk(chunk_id)
        if chunk is None:
            return
        self._counters.failures += 1
        chunk.failures += 1
        chunk.last_error = error
        if chunk.failures >= self._max_attempts:
            self._give_up(chunk_id, f"{chunk.failures} attempts failed, last: {error}")
        else:
            chunk.state = _State.PENDING

    # -- internals ---------------------------------------------------------------------

    def _chunk(self, chunk_id: int) -> _ChunkState | None:
        if not 0 <= chunk_id < len(self._chunks):
            return None
        chunk = self._chunks[chunk_id]
        return None if chunk.state is _State.DONE else chunk

    def _give_up(self, chunk_id: int, why: str) -> None:
        chunk = self._chunks[chunk_id]
        chunk.state = _State.DONE
        reason = f"access could not be re-checked after epoch {self.epoch} ({why})"
        for key in chunk.keys:
            self._counters.failed_closed += 1
            self._close(key, ErrorCode.RECHECK_FAILED, reason)

    def _close(self, key: GrantKey, code: ErrorCode, reason: str) -> None:
        for handle in self._handles.get(key, ()):
            self._closures.append(Closure(handle, code, reason))
