"""The controller follower: renewal at half-life that never stops, and the event stream
followed across failures with a bounded backoff."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from umbranet.client.follow import (
    ControllerFollower,
    follow_events,
    renew_at_half_life,
    renewal_due,
    seconds_to_half_life,
)
from umbranet.testing import LocalNetwork
from umbranet.testing.clock import FakeClock

NET = LocalNetwork()
ALICE = NET.identity("alice")


def test_half_life_is_counted_from_the_certificate() -> None:
    cert = ALICE.certificate
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    half = (end - start) / 2
    assert seconds_to_half_life(ALICE, start) == pytest.approx(half.total_seconds())
    assert seconds_to_half_life(ALICE, start + half + timedelta(seconds=5)) == 0.0


def test_renewal_goes_on_after_failures_of_any_kind(arun: Any) -> None:
    clock = FakeClock(ALICE.certificate.not_valid_after_utc)  # past half-life: no wait
    outcomes: list[Exception | None] = [RuntimeError("boom"), OSError("reset"), None]
    failures: list[Exception] = []
    renewed = asyncio.Event()

    async def renew() -> None:
        outcome = outcomes.pop(0) if outcomes else None  # later calls succeed
        if outcome is not None:
            raise outcome
        renewed.set()

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(
            renew_at_half_life(
                lambda: ALICE, renew, clock, retry=lambda: 0.0, failed=failures.append
            )
        )
        await asyncio.wait_for(renewed.wait(), 5)
        task.cancel()

    arun(main())
    assert [type(f) for f in failures] == [RuntimeError, OSError]


def test_a_long_wait_is_cut_so_a_replaced_certificate_is_noticed(arun: Any) -> None:
    """The router's renewal runs on this loop: a certificate renewed elsewhere (or a clock
    stepped past half-life) is noticed after at most `max_wait`, not at the old deadline."""
    clock = FakeClock(ALICE.certificate.not_valid_before_utc)  # half a lifetime to wait
    renewed = asyncio.Event()

    async def renew() -> None:
        renewed.set()

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(
            renew_at_half_life(
                lambda: ALICE, renew, clock, retry=lambda: 0.0, failed=print, max_wait=0.01
            )
        )
        await asyncio.sleep(0.05)
        assert not renewed.is_set()  # not due yet: the cut waits only re-read the deadline
        clock.step_wall(ALICE.certificate.not_valid_after_utc - clock.wall)
        await asyncio.wait_for(renewed.wait(), 5)
        task.cancel()

    arun(main())


def test_renewal_due_is_the_half_life_rule() -> None:
    start = ALICE.certificate.not_valid_before_utc
    half = seconds_to_half_life(ALICE, start)
    assert not renewal_due(ALICE, start)
    assert renewal_due(ALICE, start + timedelta(seconds=half))


def test_events_are_followed_across_broken_streams(arun: Any) -> None:
    attempts: list[int] = []
    seen: list[tuple[str, int]] = []
    done = asyncio.Event()

    async def events() -> AsyncIterator[tuple[str, dict[str, Any]]]:
        attempts.append(len(attempts))
        yield "hello", {"epoch": len(attempts)}
        if len(attempts) < 3:
            raise ConnectionError("stream dropped")

    async def handle(name: str, data: dict[str, Any]) -> None:
        seen.append((name, data["epoch"]))
        if len(seen) == 3:
            done.set()

    async def main() -> None:
        follower = ControllerFollower(
            events=events, on_event=handle, errors=(ConnectionError,), max_backoff=0.2
        )
        async with follower:
            await asyncio.wait_for(done.wait(), 10)

    arun(main())
    assert seen == [("hello", 1), ("hello", 2), ("hello", 3)]


def test_a_resumed_stream_says_whether_epochs_were_missed(
    arun: Any, caplog: pytest.LogCaptureFixture
) -> None:
    streams = [[("hello", 5), ("epoch", 6)], [("hello", 9)], [("hello", 9)], [("hello", 4)]]
    done = asyncio.Event()

    async def events() -> AsyncIterator[tuple[str, dict[str, Any]]]:
        if not streams:
            done.set()
            await asyncio.sleep(3600)
        for name, epoch in streams.pop(0):
            yield name, {"epoch": epoch}

    async def handle(name: str, data: dict[str, Any]) -> None:
        return None

    async def main() -> None:
        task = asyncio.ensure_future(
            follow_events(events, handle, errors=(ConnectionError,), max_backoff=0.01)
        )
        await asyncio.wait_for(done.wait(), 10)
        task.cancel()

    with caplog.at_level("INFO", logger="umbranet.client"):
        arun(main())
    messages = [r.getMessage() for r in caplog.records]
    assert "event stream resumed at epoch 9 (last seen 6): re-checking" in messages
    assert sum("resumed" in m for m in messages) == 1  # 9 after 9 missed nothing
    assert "the controller is at epoch 4, behind the 9 seen before" in messages


def test_an_unexpected_error_is_not_swallowed(arun: Any) -> None:
    async def events() -> AsyncIterator[tuple[str, dict[str, Any]]]:
        yield "hello", {}
        raise KeyError("a bug")

    async def handle(name: str, data: dict[str, Any]) -> None:
        return None

    with pytest.raises(KeyError):
        arun(follow_events(events, handle, errors=(ConnectionError,), max_backoff=0.1))
