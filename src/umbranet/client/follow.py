"""Following the controller, written once: renew the certificate at half-life, and follow the
event stream (epochs, bundle versions) with reconnect backoff.

The SDK's `Context`, the router and the agent each keep an identity alive and react to epoch
events; only what they do with a renewal or an event differs. `ControllerFollower` runs the
two loops in tasks it owns (`async with`); the parts stay callables, so each component
plugs in its own control plane (the SDK's may be the in-memory twin in tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from types import TracebackType
from typing import Any

from umbranet.clock import Clock
from umbranet.pki import IdentityFile

__all__ = [
    "ControllerFollower",
    "follow_events",
    "renew_at_half_life",
    "renewal_due",
    "seconds_to_half_life",
]

log = logging.getLogger("umbranet.client")

Event = tuple[str, dict[str, Any]]


def seconds_to_half_life(identity: IdentityFile, now: datetime) -> float:
    """Seconds until the certificate is half way through its life (0 when past it)."""
    cert = identity.certificate
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return max(0.0, (start + (end - start) / 2 - now).total_seconds())


def renewal_due(identity: IdentityFile, now: datetime) -> bool:
    """Whether the certificate is past half of its life (the one renewal rule)."""
    return seconds_to_half_life(identity, now) <= 0


async def renew_at_half_life(
    identity: Callable[[], IdentityFile],
    renew: Callable[[], Awaitable[None]],
    clock: Clock,
    *,
    retry: Callable[[], float],
    failed: Callable[[Exception], None],
    max_wait: float = 3600.0,
) -> None:
    """Forever: wait for the current certificate's half-life, then `renew`. A failure of any
    kind is reported to `failed` and retried after `retry()` seconds: renewal must never stop,
    or the certificate lapses. A wait longer than `max_wait` is cut there and the identity read
    again, so a certificate replaced by someone else moves the deadline within that time."""
    while True:
        wait = seconds_to_half_life(identity(), clock.now().wall)
        if wait > max_wait:
            await asyncio.sleep(max_wait)
            continue
        await asyncio.sleep(wait)
        try:
            await renew()
        except Exception as exc:
            failed(exc)
            await asyncio.sleep(retry())


async def follow_events(
    events: Callable[[], AsyncIterator[Event]],
    handle: Callable[[str, dict[str, Any]], Awaitable[None]],
    *,
    errors: tuple[type[BaseException], ...],
    max_backoff: float,
) -> None:
    """Forever: read the event stream and `handle` each event; when the stream ends or fails
    with one of `errors`, reconnect after a backoff that doubles up to `max_backoff` and
    starts again at 0.2 s once an event arrives. (`events` fails over to another controller
    replica by itself; the stream resumes by comparing epochs: see `_resumed`.)"""
    backoff = 0.2
    last = 0
    while True:
        try:
            async for name, data in events():
                backoff = 0.2
                last = _resumed(name, data, last)
                await handle(name, data)
        except errors as exc:
            log.debug("event stream: %s; reconnecting in %.1fs", exc, backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)


def _resumed(name: str, data: dict[str, Any], last: int) -> int:
    """The newest epoch seen, after `name`/`data`.

    The stream resumes by comparison, not replay (docs/ha.md): a reconnect's ``hello``
    carries the epoch stored for the whole cluster. Above the last one seen, events were
    missed while away, and every consumer treats such a ``hello`` as "re-check everything";
    equal, nothing was missed; below, the controller is behind what we saw (a restored
    database), and consumers keep the higher epoch they have.
    """
    epoch = data.get("epoch")
    if name not in ("hello", "epoch") or not isinstance(epoch, int):
        return last
    if name == "hello" and last:
        if epoch > last:
            log.info("event stream resumed at epoch %d (last seen %d): re-checking", epoch, last)
        elif epoch < last:
            log.warning("the controller is at epoch %d, behind the %d seen before", epoch, last)
    return max(last, epoch)


class ControllerFollower:
    """Both loops as tasks it owns: `async with ControllerFollower(...)` runs them until the
    block ends. Pass `renew=None` to follow events only."""

    def __init__(
        self,
        *,
        events: Callable[[], AsyncIterator[Event]],
        on_event: Callable[[str, dict[str, Any]], Awaitable[None]],
        errors: tuple[type[BaseException], ...],
        max_backoff: float,
        renew: Callable[[], Awaitable[None]] | None = None,
        identity: Callable[[], IdentityFile] | None = None,
        clock: Clock | None = None,
        retry: Callable[[], float] = lambda: 30.0,
        failed: Callable[[Exception], None] = lambda exc: None,
    ) -> None:
        self._loops: list[Callable[[], Awaitable[None]]] = [
            lambda: follow_events(events, on_event, errors=errors, max_backoff=max_backoff)
        ]
        if renew is not None:
            assert identity is not None and clock is not None, "renewal needs identity and clock"
            self._loops.append(
                lambda: renew_at_half_life(identity, renew, clock, retry=retry, failed=failed)
            )
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> ControllerFollower:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(_run(make)) for make in self._loops]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _run(make: Callable[[], Awaitable[None]]) -> None:
    await make()
