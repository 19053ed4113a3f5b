"""What this endpoint reports about itself, for the policy's posture checks.

The report names the OS (``platform.system()``, lower case), its version (the kernel release on
Linux), the Umbranet SDK version and the names of the running processes (``/proc/*/comm`` on
Linux: the names `ps -e` shows, 15 characters at most). The controller adds what it sees itself
(the source address, the certificate's age), so an endpoint cannot claim those.

A `Context` reports once before its first ticket and then whenever the report changes; it
samples every `DEFAULT_INTERVAL` seconds (``UMBRA_POSTURE_REPORT_INTERVAL`` overrides it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from umbranet import __version__

__all__ = ["DEFAULT_INTERVAL", "PostureReporter", "collect", "report_interval"]

log = logging.getLogger("umbranet.sdk")

DEFAULT_INTERVAL = 15.0
_MAX_PROCESSES = 8192


def collect(proc: Path = Path("/proc")) -> dict[str, Any]:
    """This endpoint's posture report, as `POST /v1/posture` takes it."""
    return {
        "os": platform.system().lower() or None,
        "os_version": platform.release() or None,
        "sdk_version": __version__,
        "processes": _process_names(proc),
    }


def report_interval(environ: dict[str, str] | None = None) -> float:
    """Seconds between samples: ``UMBRA_POSTURE_REPORT_INTERVAL`` or `DEFAULT_INTERVAL`."""
    text = (environ if environ is not None else dict(os.environ)).get(
        "UMBRA_POSTURE_REPORT_INTERVAL", ""
    )
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def _process_names(proc: Path) -> list[str] | None:
    """Names of running processes, or None where there is no procfs (not reported)."""
    if not proc.is_dir():
        return None
    names: set[str] = set()
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            name = (Path(entry.path) / "comm").read_text(errors="replace").strip()
        except OSError:  # the process ended while we looked, or is not ours to read
            continue
        if name:
            names.add(name[:64])
        if len(names) >= _MAX_PROCESSES:
            break
    return sorted(names)


class PostureReporter:
    """Sends the report at start, then whenever it changed (sampled every `report_interval`).
    `sent` is set after the first attempt, whatever its outcome: tickets wait for it, as
    posture-gated rules can only allow once the controller has a report."""

    def __init__(
        self, send: Callable[[dict[str, Any]], Awaitable[object]], counters: dict[str, int]
    ) -> None:
        self._send = send
        self._counters = counters
        self._last: dict[str, Any] | None = None
        self.sent = asyncio.Event()

    def forget(self) -> None:
        """Report again at the next sample (e.g. a renewal changed the certificate's age)."""
        self._last = None

    async def run(self, running: Callable[[], bool]) -> None:
        interval = report_interval()
        try:
            while running():
                try:
                    report = await asyncio.to_thread(collect)
                    if report != self._last:
                        await self._send(report)
                        self._last = report
                except Exception as exc:  # a posture report must never stop dials
                    failed = self._counters.get("posture_report_failed", 0) + 1
                    self._counters["posture_report_failed"] = failed
                    log.debug("posture report failed: %s", exc)
                self.sent.set()
                await asyncio.sleep(interval)
        finally:
            self.sent.set()
