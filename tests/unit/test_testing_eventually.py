"""`eventually`, the one bounded wait of real-time tests: it returns what the condition
returned once true, and turns a wait that never ends into a failure that says what."""

from __future__ import annotations

import asyncio

import pytest

from umbranet.testing import eventually


def test_eventually_returns_the_condition_s_value_once_it_holds() -> None:
    async def main() -> object:
        seen: list[int] = []
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, seen.append, 7)
        return await eventually(lambda: seen[:1], within=30.0, interval=0.001)

    assert asyncio.run(main()) == [7]


def test_eventually_fails_with_what_did_not_happen_after_its_bound() -> None:
    async def main() -> None:
        await eventually(lambda: 0, within=0.05, what="the router bound the service")

    with pytest.raises(AssertionError, match="the router bound the service still false"):
        asyncio.run(main())
