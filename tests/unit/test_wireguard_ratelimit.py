"""The per-source handshake rate limiter: burst, refill, keys, bounded table."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.proto.wireguard.ratelimit import HandshakeRateLimiter, source_key


def test_burst_then_refill() -> None:
    limiter = HandshakeRateLimiter(per_second=20, burst=5)
    assert [limiter.allow(b"a", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow(b"b", 0.0)  # another source has its own bucket
    assert limiter.allow(b"a", 0.05)  # one token back after 1/20 s
    assert not limiter.allow(b"a", 0.05)


def test_ipv6_sources_share_their_slash_64() -> None:
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:198.18.0.1") == source_key("198.18.0.1")


def test_the_table_is_bounded_and_idle_sources_are_forgotten() -> None:
    limiter = HandshakeRateLimiter(max_entries=3)
    assert all(limiter.allow(bytes([i]), 0.0) for i in range(3))
    assert not limiter.allow(b"new", 0.0)  # full of active sources: refuse, do not grow
    assert len(limiter) == 3
    assert limiter.allow(b"new", 2.0)  # the others went idle and were swept
    assert len(limiter) == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 0.5), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    limiter = HandshakeRateLimiter(per_second=20, burst=5)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += limiter.allow(b"x", now)
        assert allowed <= 5 + 20 * now + 1e-9
