"""The controller-at-scale rows (`bench.scale_pg`) in RESULTS.md, one column per engine.

`python -m bench.scale_pg --record` keeps each engine's newest result in
``bench/CONTROLLER_SCALE.json`` and re-renders RESULTS.md, which shows them in their own
section: these rows come from their own command (not `python -m bench`), so the section
names it and the time of each engine's run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["RECORD", "controller_markdown", "record"]

RECORD = Path(__file__).resolve().with_name("CONTROLLER_SCALE.json")
ENGINES = ("postgresql", "sqlite")


def record(result: dict[str, Any], path: Path = RECORD) -> None:
    """Keep `result` as its engine's newest run (the other engine's stays)."""
    kept = json.loads(path.read_text()) if path.exists() else {}
    kept[result["engine"]] = result
    path.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")


def controller_markdown(path: Path = RECORD) -> list[str]:
    """The section's lines; none when nothing was recorded."""
    if not path.exists():
        return []
    kept: dict[str, dict[str, Any]] = json.loads(path.read_text())
    engines = [e for e in ENGINES if e in kept]
    if not engines:
        return []
    lines = [
        "## Controller at scale (PostgreSQL and SQLite)",
        "",
        "`python -m bench.scale_pg --record` (PostgreSQL: a throwaway local cluster with "
        "fsync off; two replicas as separate processes) and `python -m bench.scale_pg --db "
        "sqlite --record` (one replica). Runs: "
        + "; ".join(f"{e} {kept[e].get('date', '?')}" for e in engines)
        + ". The machine may have been shared during these runs: read them as orders of "
        "magnitude.",
        "",
        "| row | " + " | ".join(engines) + " |",
        "|---|" + "---|" * len(engines),
    ]
    for label, cell in _ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(kept[e]) for e in engines) + " |")
    errors = [f"{e}: {err}" for e in engines for err in kept[e].get("errors", [])]
    if errors:
        lines += ["", "Errors:", "", *[f"- {err[:300]}" for err in errors]]
    return [*lines, ""]


def _sizes(r: dict[str, Any]) -> str:
    s = r.get("sizes", {})
    return f"{s.get('identities', 0):,} identities, {s.get('services', 0):,} services, " + (
        f"{s.get('rules', 0):,} rules" if r.get("view_mode") == "policy" else "attribute rules"
    )


def _replica(key: str, field: str, unit: str = "") -> Any:
    def cell(r: dict[str, Any]) -> str:
        row = r.get(key) or {}
        value = row.get(field)
        if isinstance(value, list):  # one figure per replica
            return ", ".join(f"{v}{unit}" for v in value)
        return "-" if value is None else f"{value}{unit}"

    return cell


def _view(r: dict[str, Any]) -> str:
    view = (r.get("replicas_1") or {}).get("view")
    if not view:
        return "-"
    return (
        f"{view['median_ms']} ms (p99 {view['p99_ms']} ms; {view['services']} services, "
        f"{view['peers']} peers)"
    )


def _fanout(r: dict[str, Any]) -> str:
    f = r.get("fanout")
    if not f:
        return "- (one replica)"
    return f"median {f['median_ms']} ms, p99 {f['p99_ms']} ms over {f['bumps']} bumps"


_ROWS = (
    ("network", _sizes),
    ("GET /v1/view through the API, 1 replica", _view),
    ("GET /v1/me, warm, 1 replica", _replica("replicas_1", "me_ms", " ms")),
    ("a cold replica's first view + me", _replica("replicas_1", "cold_view_s", " s")),
    ("the same, each of 2 replicas", _replica("replicas_2", "cold_view_s", " s")),
    ("enrollments/s, 1 replica", _replica("replicas_1", "enrollments_per_s")),
    ("enrollments/s, 2 replicas", _replica("replicas_2", "enrollments_per_s")),
    ("tickets/s, 1 replica", _replica("replicas_1", "tickets_per_s")),
    ("tickets/s, 2 replicas", _replica("replicas_2", "tickets_per_s")),
    (
        "controller CPU s per ticket, 1 replica",
        _replica("replicas_1", "ticket_controller_cpu_s_per_op"),
    ),
    ("epoch fan-out A -> B (disable on A to event on B)", _fanout),
)
