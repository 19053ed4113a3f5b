"""One bounded cache type for every speed-up cache in the tree.

The rule every cache here follows, written once: **only successes are cached.** A cache
remembers a value that was computed or verified successfully, so the next caller can skip the
work; a failure (a refused ticket, a policy that does not compile, a signature that does not
verify) is never remembered, because a remembered refusal would let one bad input pin a
decision, could be used to fill the cache, and hides the reason from the next caller. A cache
is only ever a speed-up: dropping any entry at any time must change nothing but speed, so
callers treat a miss as "compute it again", never as "no".

`BoundedCache` is a least-recently-used map with a maximum size and an optional time to live;
time is an argument (``now``, seconds on any clock that only moves forward), never read here.
An entry stored "in the future" (the clock went back) counts as expired. Prefer instances
owned by whoever uses them and injected; a module-level cache is acceptable only when its key
already names everything that makes an entry valid (content hashes, a database URL), so two
components in one process (tests) can never see each other's entries. Thread-safe: the
controller's routes run in a thread pool.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BoundedCache"]

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most `size` entries, least recently used evicted first; each lives `ttl` seconds
    (when given, every call must pass ``now``)."""

    def __init__(self, size: int, ttl: float | None = None) -> None:
        if size < 1:
            raise ValueError("a cache holds at least one entry")
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive")
        self.size = size
        self.ttl = ttl
        self._items: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: K, now: float | None = None) -> V | None:
        """The value remembered for `key`, or None (never stored, evicted or expired)."""
        moment = self._moment(now)
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.misses += 1
                return None
            value, stored_at = entry
            if self.ttl is not None and not stored_at <= moment < stored_at + self.ttl:
                del self._items[key]
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: K, value: V, now: float | None = None) -> None:
        """Remember a success (see the module's rule); evicts the least recently used."""
        moment = self._moment(now)
        with self._lock:
            self._items[key] = (value, moment)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
                self.evictions += 1

    def fetch(self, key: K, compute: Callable[[], V], now: float | None = None) -> V:
        """The remembered value, or `compute()`'s, remembered; an exception from `compute`
        propagates and nothing is stored. Two threads may compute the same key at once
        (both results are equal; the later one stays)."""
        value = self.get(key, now)
        if value is None:
            value = compute()
            self.put(key, value, now)
        return value

    def discard(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def statistics(self) -> dict[str, int]:
        return {
            "entries": len(self._items),
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }

    def _moment(self, now: float | None) -> float:
        if now is None:
            if self.ttl is not None:
                raise ValueError("a cache with a ttl needs `now`")
            return 0.0
        return now
