"""A job the controller runs on a clock, in a background thread: written once for all of them
(the posture ticker, the ephemeral sweeper).

Each job says what one run does (`tick`, which tests call directly); this base runs it every
``interval`` seconds from `start` until `stop`. A run that fails is logged and the next one
runs anyway: one bad row must not stop the clock for everyone.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["PeriodicJob"]


class PeriodicJob:
    """``job.start()`` ... ``job.stop()``; subclasses implement `tick`."""

    name = "periodic-job"  # the thread's name, and the job's name in a failure's log line

    def __init__(self, interval: float, log: logging.Logger) -> None:
        self.interval = interval
        self._log = log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> object:
        """One run of the job."""
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:
                self._log.exception("%s failed", self.name)
