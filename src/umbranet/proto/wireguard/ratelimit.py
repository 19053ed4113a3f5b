"""A per-source token bucket for handshake messages that arrive while the device is under load.

MAC2 proves a sender can receive at the address it claims, but not that it is polite: a host
that owns its address can still send valid handshakes as fast as it likes, and each costs
the responder four Diffie-Hellman operations. Under load, then, each source gets a bucket of
`burst` tokens refilled at `per_second` (20/s and 5, as the reference implementations use).
IPv4 sources are keyed by address, IPv6 sources by their /64, since one host usually holds a
whole /64. The table is bounded: buckets idle for a second are full again and are swept
away, and when the table is full of active sources, new sources are refused rather than
letting memory grow (counted by the device as `rate_limited`).
"""

from __future__ import annotations

import ipaddress

__all__ = ["HandshakeRateLimiter", "source_key"]


def source_key(host: str) -> bytes:
    """What a source is limited by: an IPv4 address, or the /64 of an IPv6 address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.encode("utf-8", "replace")
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        return mapped.packed if mapped is not None else address.packed[:8]
    return address.packed


class HandshakeRateLimiter:
    """Token buckets by source; `allow(key, now)` spends a token if there is one."""

    __slots__ = ("_buckets", "_burst", "_last_sweep", "_max_entries", "_rate")

    def __init__(self, per_second: float = 20.0, burst: int = 5, max_entries: int = 4096) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._max_entries = max_entries
        self._buckets: dict[bytes, tuple[float, float]] = {}  # key -> (tokens, updated)
        self._last_sweep = 0.0

    def allow(self, key: bytes, now: float) -> bool:
        if now - self._last_sweep >= 1.0 or now < self._last_sweep:
            self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_entries:
                return False
            tokens = self._burst
        else:
            tokens, updated = bucket
            tokens = min(self._burst, tokens + max(0.0, now - updated) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def __len__(self) -> int:
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        # A bucket idle for a second has refilled past its burst: forgetting it changes nothing.
        idle = 1.0 if self._rate * 1.0 >= self._burst else self._burst / self._rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < idle}
        self._last_sweep = now
