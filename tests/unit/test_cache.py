"""umbranet.cache.BoundedCache: bounded, least recently used first, entries that expire on the
caller's clock, and failures never remembered."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbranet.cache import BoundedCache


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2
    assert cache.statistics()["evictions"] == 1


def test_entries_expire_after_their_ttl_on_the_callers_clock() -> None:
    cache: BoundedCache[str, str] = BoundedCache(8, ttl=10.0)
    cache.put("k", "v", now=100.0)
    assert cache.get("k", now=109.9) == "v"
    assert cache.get("k", now=110.0) is None
    assert len(cache) == 0


def test_an_entry_from_the_future_is_not_trusted() -> None:
    """The clock went back: the entry may have been valid only at a time that is not now."""
    cache: BoundedCache[str, str] = BoundedCache(8, ttl=10.0)
    cache.put("k", "v", now=100.0)
    assert cache.get("k", now=99.0) is None


def test_a_ttl_cache_needs_now() -> None:
    cache: BoundedCache[str, str] = BoundedCache(8, ttl=1.0)
    with pytest.raises(ValueError, match="now"):
        cache.get("k")
    with pytest.raises(ValueError):
        BoundedCache(0)


def test_fetch_remembers_successes_only() -> None:
    cache: BoundedCache[str, int] = BoundedCache(4)
    calls: list[str] = []

    def refuse() -> int:
        calls.append("refuse")
        raise PermissionError("no")

    for _ in range(2):
        with pytest.raises(PermissionError):
            cache.fetch("k", refuse)
    assert calls == ["refuse", "refuse"]  # the refusal was decided again, not remembered
    assert cache.fetch("k", lambda: 7) == 7
    assert cache.fetch("k", lambda: 8) == 7


@given(
    st.integers(1, 5),
    st.lists(st.tuples(st.sampled_from(["get", "put"]), st.integers(0, 8)), max_size=60),
)
def test_behaves_like_a_reference_lru(size: int, ops: list[tuple[str, int]]) -> None:
    cache: BoundedCache[int, int] = BoundedCache(size)
    model: OrderedDict[int, int] = OrderedDict()
    for step, (op, key) in enumerate(ops):
        if op == "put":
            cache.put(key, step)
            model[key] = step
            model.move_to_end(key)
            while len(model) > size:
                model.popitem(last=False)
        else:
            expected = model.get(key)
            if expected is not None:
                model.move_to_end(key)
            assert cache.get(key) == expected
        assert len(cache) == len(model) <= size
