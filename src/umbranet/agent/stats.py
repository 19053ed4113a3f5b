"""Counters the agent keeps: every refused, failed or reset flow is counted with its reason.

One flat ``name -> int`` map shared by the agent's parts, shown by ``umbra status``. Keys
are ``<event>`` or ``<event>.<code>`` (e.g. ``dial_failed.no_terminator``), so a refusal's
machine code survives into the counter without free text becoming a key.
"""

from __future__ import annotations

__all__ = ["Counters"]


class Counters:
    """A growing set of named event counts."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}

    def add(self, key: str, amount: int = 1) -> None:
        self._values[key] = self._values.get(key, 0) + amount

    def get(self, key: str) -> int:
        return self._values.get(key, 0)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._values.items()))
