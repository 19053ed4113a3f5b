"""docs/metrics.md lists exactly the metrics the three components expose, so the names a
dashboard is written against are the names served."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from umbranet.agent.stats import Counters
from umbranet.controller.metrics import Metrics as ControllerMetrics
from umbranet.router.metrics import EVENTS, RouterMetrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

# A router whose statistics() reports every key the collector knows.
FULL_ROUTER_STATISTICS = {
    "links": 1,
    "circuits": 1,
    "bindings": 1,
    "epoch": 7,
    "bytes_in": 1,
    "bytes_out": 1,
    "frames_in": 1,
    "frames_out": 1,
    "counters": {**dict.fromkeys(EVENTS, 1), "ticket_expired": 1},
}


def _exposed(registry: CollectorRegistry) -> set[str]:
    """Names as a scraper sees them: counters with ``_total``, the others as declared."""
    names = set()
    for family in registry.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def _documented(section: str) -> set[str]:
    text = DOC.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(umbra_\w+)` \|", body, flags=re.MULTILINE))


@pytest.mark.parametrize(
    ("section", "registry"),
    [
        ("Controller", lambda: ControllerMetrics().registry),
        ("Router", lambda: RouterMetrics(lambda: FULL_ROUTER_STATISTICS).registry),
        ("Agent", lambda: Counters().registry),
    ],
)
def test_every_exposed_metric_is_documented_and_nothing_else(
    section: str, registry: Callable[[], CollectorRegistry]
) -> None:
    assert _exposed(registry()) == _documented(section)
