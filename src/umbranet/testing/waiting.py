"""`eventually`: the one way real-time tests wait for something the event loop will do.

Simulated tests need no waiting (`SimNet.run_until` runs virtual time); tests against real
sockets and processes do, when a component offers no event to wait on. Every wait is
bounded (`within`) and fails with an AssertionError naming what did not happen, so a hang
becomes a failure with a reason, never a test stuck until the runner kills it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

__all__ = ["eventually"]

T = TypeVar("T")


async def eventually(
    condition: Callable[[], T],
    *,
    within: float = 30.0,
    interval: float = 0.01,
    what: str | None = None,
) -> T:
    """Poll `condition()` every `interval` seconds until it returns something truthy, and
    return that; AssertionError if it has not after `within` seconds (a bound, not a timing
    assertion: it only ever fails a test that would otherwise hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = condition()
        if value:
            return value
        if loop.time() >= deadline:
            name = what or getattr(condition, "__qualname__", repr(condition))
            raise AssertionError(f"{name} still false after {within}s; last value {value!r}")
        await asyncio.sleep(interval)
