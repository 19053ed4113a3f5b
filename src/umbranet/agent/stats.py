"""Counters the agent keeps: every refused, failed or reset flow is counted with its reason.

One set of counts shared by the agent's parts, shown by ``umbra status`` (as a flat
``key -> int`` map) and served at ``GET /metrics`` on the local API (Prometheus text). Keys are
``<event>`` or ``<event>.<code>`` (e.g. ``dial_failed.no_terminator``), so a refusal's machine
code survives into the counter without free text becoming a key; in Prometheus they are one
family, ``umbra_agent_events_total{event="dial_failed",code="no_terminator"}`` (``code`` is
empty for plain events). The registry is the agent's own, never the process-global one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from umbranet.obs import Metrics

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["EVENTS_TOTAL", "Counters"]

EVENTS_TOTAL = "umbra_agent_events_total"


class Counters:
    """A growing set of named event counts, kept on the agent's own registry (`metrics`)."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self._events = self.metrics.counter(
            EVENTS_TOTAL,
            "Agent events (streams carried, dials failed, API requests, ...) by event and code.",
            ("event", "code"),
        )

    @property
    def registry(self) -> CollectorRegistry:
        """What ``GET /metrics`` renders."""
        return self.metrics.registry

    def add(self, key: str, amount: int = 1) -> None:
        event, _, code = key.partition(".")
        self._events.labels(event=event, code=code).inc(amount)

    def get(self, key: str) -> int:
        """How often `key` (``<event>`` or ``<event>.<code>``) was counted."""
        event, _, code = key.partition(".")
        return int(self.metrics.get(EVENTS_TOTAL, event=event, code=code))

    def snapshot(self) -> dict[str, int]:
        """Every counted key with its count, sorted (what ``umbra status`` shows)."""
        out: dict[str, int] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == EVENTS_TOTAL and sample.value:
                    event, code = sample.labels["event"], sample.labels["code"]
                    out[f"{event}.{code}" if code else event] = int(sample.value)
        return dict(sorted(out.items()))
