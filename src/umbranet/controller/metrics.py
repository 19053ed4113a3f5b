"""In-process counters of the controller, served as JSON at ``GET /v1/metrics``.

Every access verdict and every refused request is counted here, keyed in the Prometheus text
style (``name{label="value"}``) so a later exporter can serve the same numbers unchanged.
"""

from __future__ import annotations

import threading

__all__ = ["Metrics"]


class Metrics:
    """Thread-safe monotonically increasing counters (routes run in a thread pool)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        key = _key(name, labels)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + amount

    def get(self, name: str, **labels: str) -> int:
        with self._lock:
            return self._counters.get(_key(name, labels), 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counters.items()))


def _key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"
