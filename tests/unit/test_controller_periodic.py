"""The controller's periodic jobs (posture ticker, ephemeral sweeper) share one loop: it runs
the job on its interval, survives a failing run, and stops when asked."""

from __future__ import annotations

import logging
import threading

import pytest

from umbranet.controller.periodic import PeriodicJob


class Flaky(PeriodicJob):
    name = "flaky"

    def __init__(self) -> None:
        super().__init__(0.001, logging.getLogger("test.periodic"))
        self.runs = 0
        self.third = threading.Event()

    def tick(self) -> None:
        self.runs += 1
        if self.runs == 3:
            self.third.set()
        if self.runs <= 2:
            raise RuntimeError("a bad row")


def test_a_failing_run_is_logged_and_the_clock_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    job = Flaky()
    with caplog.at_level(logging.ERROR, logger="test.periodic"):
        job.start()
        try:
            assert job.third.wait(10)
        finally:
            job.stop()
    assert [r.getMessage() for r in caplog.records][:2] == ["flaky failed", "flaky failed"]
    runs = job.runs
    assert not job._thread or not job._thread.is_alive()  # stopped: no more runs
    assert job.runs == runs
