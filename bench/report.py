"""Turning runs into medians, ratios and the RESULTS.md file (plus a table on the terminal).

Ratios are only meaningful within one invocation on one machine, so every table here is
computed from the runs of this invocation: each path against raw veth, each Umbranet variant
(`umbranet*` paths) against each peer, and the issue's targets against nebula and ssh.
Throughput ratios read "x times as fast", time and CPU ratios "x times as long".
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.measure import PathRun, Settings
from bench.report_controller import controller_markdown
from bench.report_scale import scale_markdown, scale_rows

__all__ = [
    "METRICS",
    "Metric",
    "Report",
    "load_json",
    "main",
    "medians",
    "merge_reports",
    "print_table",
    "write_json",
    "write_markdown",
]


@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    higher_is_better: bool
    digits: int = 0


METRICS = (
    Metric("tput1_gbps", "TCP 1 stream Gbit/s", True, 2),
    Metric("tput4_gbps", "TCP 4 streams Gbit/s", True, 2),
    Metric("rr_pin_p50", "RR p50 µs (1 CPU)", False),
    Metric("rr_pin_p99", "RR p99 µs (1 CPU)", False),
    Metric("rr_def_p50", "RR p50 µs (default)", False),
    Metric("rr_def_p99", "RR p99 µs (default)", False),
    Metric("conn_pin_p50", "connect+1RT p50 µs (1 CPU)", False),
    Metric("conn_def_p50", "connect+1RT p50 µs (default)", False),
    Metric("conn1_pin_p50", "first dial+1RT p50 µs (1 CPU)", False),
    Metric("conn1_def_p50", "first dial+1RT p50 µs (default)", False),
    Metric("tput1_cpu_s_per_gb", "CPU s/GB, all processes (1 stream)", False, 2),
    Metric("tput1_tunnel_s_per_gb", "CPU s/GB, tunnel only (1 stream)", False, 2),
    Metric("tput4_cpu_s_per_gb", "CPU s/GB, all processes (4 streams)", False, 2),
    Metric("tput1_tunnel_pct", "tunnel CPU % of a core (1 stream)", False),
)
_SHORT = {
    "tput1_gbps": "1 stream Gbit/s",
    "tput4_gbps": "4 streams Gbit/s",
    "rr_pin_p50": "RR p50 µs 1 CPU",
    "rr_def_p50": "RR p50 µs default",
    "conn_pin_p50": "connect p50 µs 1 CPU",
    "conn_def_p50": "connect p50 µs default",
    "conn1_pin_p50": "first dial p50 µs 1 CPU",
    "conn1_def_p50": "first dial p50 µs default",
    "tput1_cpu_s_per_gb": "CPU s/GB (1 stream)",
}
_OTHER_LOAD = Metric("other_load_pct", "other load % of a core (max)", False)
_RATIO_KEYS = (
    "tput1_gbps",
    "tput4_gbps",
    "rr_pin_p50",
    "rr_pin_p99",
    "rr_def_p50",
    "conn_pin_p50",
    "conn_def_p50",
    "tput1_cpu_s_per_gb",
)
_TERMINAL_KEYS = (
    "tput1_gbps",
    "tput4_gbps",
    "rr_pin_p50",
    "rr_def_p50",
    "conn_pin_p50",
    "conn_def_p50",
    "tput1_cpu_s_per_gb",
)


@dataclass
class Report:
    command: str
    started: str
    finished: str
    settings: Settings
    runs_requested: int
    facts: dict[str, str]
    versions: dict[str, str]
    titles: dict[str, str]  # path -> description, in report order
    runs: list[PathRun] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why
    notes: list[str] = field(default_factory=list)
    scale: dict[str, Any] = field(default_factory=dict)  # bench.scale.run_scale's result
    # When rows come from more than one invocation (--merge): which rows came from which.
    provenance: list[str] = field(default_factory=list)


def merge_reports(old: Report, new: Report) -> Report:
    """`old` with the paths (and scale rows) that `new` measured replaced by `new`'s.

    Why: re-measuring one path must not throw away the others' medians, and each set of rows
    keeps the command, time and versions it was measured with.
    """
    measured = {r.path for r in new.runs}
    kept = [r for r in old.runs if r.path not in measured]
    titles = {**old.titles, **new.titles}
    order = _ordered(titles)
    provenance = list(old.provenance) or [_provenance(old, sorted({r.path for r in old.runs}))]
    rows = sorted(measured) + (["scale"] if new.scale else [])
    provenance.append(_provenance(new, rows))
    versions = dict(old.versions)
    for key, value in new.versions.items():
        if versions.get(key, value) != value:
            versions[f"{key} ({', '.join(rows)})"] = value
        else:
            versions[key] = value
    facts = dict(old.facts)
    for key in ("loadavg at start", "loadavg at end"):
        if key in new.facts:
            facts[f"{key} ({', '.join(rows)})"] = new.facts[key]
    return replace(
        old,
        finished=new.finished,
        facts=facts,
        runs=kept + list(new.runs),
        titles={p: titles[p] for p in order},
        skipped={**old.skipped, **new.skipped},
        notes=[*old.notes, *new.notes],
        scale=new.scale or old.scale,
        versions=versions,
        provenance=provenance,
    )


def medians(runs: Sequence[PathRun]) -> dict[str, dict[str, float]]:
    """path -> metric -> median over the runs that produced the metric."""
    values: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for key, value in r.metrics.items():
            values.setdefault(r.path, {}).setdefault(key, []).append(value)
    return {p: {k: statistics.median(v) for k, v in m.items()} for p, m in values.items()}


def write_json(report: Report, out: Path) -> None:
    data = asdict(report)
    data["settings"]["env"] = {}  # environment of the clients: not a result
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def write_markdown(report: Report, out: Path) -> None:
    med = medians(report.runs)
    paths = [p for p in _ordered(report.titles) if p in med]
    s = report.settings
    if report.provenance:
        origin = [
            f"Medians of {report.runs_requested} run(s) per path, from more than one invocation "
            "(each set of rows with its own command, time and source):",
            "",
            *[f"- {p}" for p in report.provenance],
            "",
            "Within one invocation the paths are interleaved within each run; across invocations "
            "compare ratios with care. The machine is small and may be shared.",
        ]
    else:
        origin = [
            f"Generated by `{report.command}` ({report.started} to {report.finished}). "
            f"Medians of {report.runs_requested} run(s) taken in this one invocation; the paths "
            "are interleaved within each run. Compare ratios, not absolute numbers: the machine "
            "is small and may be shared."
        ]
    lines = [
        "# Umbranet side-by-side benchmark",
        "",
        *origin,
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in report.facts.items()],
        "",
        "## Versions",
        "",
        *[f"- {k}: {v}" for k, v in report.versions.items()],
        "",
        "## Method",
        "",
        "- Two network namespaces joined by a veth pair (198.18.0.1/24 <-> 198.18.0.2/24, no "
        "default route). Servers in B: `iperf3 -s`, an echo server and a byte sink (`bench/rr.py "
        "serve`, thread per connection, TCP_NODELAY). Clients in A.",
        f"- Throughput: `iperf3 -t {s.iperf_seconds} -J`, receiver side, 1 stream and `-P 4`, "
        "default scheduling. CPU s/GB = CPU seconds (user+system, from /proc and wait4) of "
        "every process on the path (iperf3 client and server, tunnel daemons and their "
        "children) per 10^9 bytes received; kernel softirq time outside those processes is not "
        "included. 'tunnel only' counts the tunnel daemons alone.",
        f"- RR: {s.rr_count} round trips of 64 B on one TCP connection after {s.rr_warmup} "
        f"warm-up (Python client). Connect: {s.conn_count} x (new TCP connection + one 64 B "
        "round trip + close).",
        "- '1 CPU' = client, tunnel daemons and echo server pinned to CPU 0: the software cost of "
        "the path, the stable number for ratios. 'default' = normal scheduling: what a user "
        "sees; on small VMs it adds cross-CPU wake-ups and is bimodal.",
        "- Library paths (`PyClient`: `rawpy`, `umbranet*`) have no TCP port to point iperf3 "
        "at: their throughput is `bench.rr blast` (128 KiB writes for the same duration, "
        f"and at least {s.blast_min_bytes / (1 << 30):.0f} GiB, capped at "
        f"{s.blast_max_seconds:.0f} s) counted by the sink at the far end; their RR/connect "
        "use the same Python clients. For Umbranet, 'connect' = dial a new end-to-end stream "
        "as an application's second and later dials to a host do (the stream opens inside "
        "the end-to-end session of the first dial: no handshake; over the already open "
        "router link and with the cached dial ticket) + one 64 B round trip + half-close; "
        "'first dial' = the same with a full Noise XX handshake on every dial (what the "
        "first dial to a host costs). The CPU columns count router + host SDK process + "
        "controller.",
        "",
        "## Results (medians)",
        "",
        *_table(
            ["path", *[m.header for m in METRICS]],
            [[p, *[_fmt(med[p].get(m.key), m) for m in METRICS]] for p in paths],
        ),
        "",
        "Paths: " + "; ".join(f"`{p}` = {report.titles[p]}" for p in paths) + ".",
        "",
    ]
    if "raw" in med:
        lines += [
            "## Relative to raw veth",
            "",
            "Throughput: % of raw. Times and CPU per GB: multiple of raw.",
            "",
        ]
        lines += _ratio_table(med, paths, "raw", percent_for_throughput=True)
    ours = [p for p in paths if p.startswith("umbranet")]
    peers = [p for p in paths if not p.startswith("umbranet")]
    for u in ours:
        lines += [
            f"## `{u}` relative to each peer",
            "",
            f"`{u}`'s median divided by the peer's: throughput > 1 means Umbranet is "
            "faster; times and CPU per GB < 1 mean Umbranet is better.",
            "",
        ]
        lines += _ratio_table(med, peers, u, invert=True)
    mesh = [p for p in paths if p.startswith("umbranet-mesh")]
    if mesh and "umbranet-async" in med:
        lines += [
            "## Mesh paths relative to one router (`umbranet-async`)",
            "",
            "Each multi-router row's median divided by the one-router path's (the same async "
            "SDK client): throughput < 1 and times > 1 are what the extra routers cost.",
            "",
        ]
        lines += _ratio_table(med, mesh, "umbranet-async")
    if ours and "nebula" in med:
        lines += ["## Targets (from the issue)", "", *_targets(med, ours), ""]
    l3 = [p for p in ours if p.startswith("umbranet-l3")]
    if l3 and ("wireguard" in med or "nebula" in med):
        lines += ["## Network mode targets (issue 13)", "", *_network_targets(med, l3), ""]
    if report.scale:
        lines += scale_markdown(report.scale)
    lines += controller_markdown()
    lines += ["## Per run", "", "Cells read `run1 / run2 / ...`.", ""]
    per_run = (
        "tput1_gbps",
        "tput1_retr",
        "tput4_gbps",
        "rr_pin_p50",
        "rr_def_p50",
        "conn_pin_p50",
        "conn_def_p50",
        "tput1_tunnel_pct",
        "other_load_pct",
    )
    rows = []
    for p in paths:
        runs = sorted((r for r in report.runs if r.path == p), key=lambda r: r.run)
        rows.append(
            [p, *[" / ".join(_fmt(r.metrics.get(k), _metric(k)) for r in runs) for k in per_run]]
        )
    lines += _table(["path", *[_metric(k).header for k in per_run]], rows)
    lines += ["", "## Notes", ""]
    notes = list(report.notes)
    notes += [f"{p}: skipped: {why}" for p, why in report.skipped.items()]
    for r in report.runs:
        notes += [f"{r.path} run{r.run}: error: {e}" for e in r.errors]
    seen: set[str] = set()
    for r in report.runs:
        for n in r.notes:
            # facts about the path (cipher, MTU) once; disturbances per run
            disturbed = "busy" in n or "meanwhile" in n
            text = f"{r.path} run{r.run}: {n}" if disturbed else f"{r.path}: {n}"
            if text not in seen:
                seen.add(text)
                notes.append(text)
    lines += [f"- {n}" for n in notes] or ["- none"]
    out.write_text("\n".join(lines) + "\n")


def print_table(report: Report) -> None:
    """The medians on the terminal: a Rich table when Rich is installed, plain text otherwise."""
    med = medians(report.runs)
    paths = [p for p in _ordered(report.titles) if p in med]
    headers = ["path", *[_SHORT.get(k, _metric(k).header) for k in _TERMINAL_KEYS]]
    rows = [[p, *[_fmt(med[p].get(k), _metric(k)) for k in _TERMINAL_KEYS]] for p in paths]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print("\n".join(_table(headers, rows)))
        if report.scale:
            print("\n".join(_table(["row", "result", "target"], scale_rows(report.scale))))
        _print_skipped(report)
        return
    table = Table(title=f"medians of {report.runs_requested} run(s)")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and CI: do not wrap the table at 80 columns
    console.print(table)
    if report.scale:
        scale = Table(title="scale")
        for i, h in enumerate(("row", "result", "target")):
            scale.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
        for row in scale_rows(report.scale):
            scale.add_row(row[0], row[1], row[2])
        console.print(scale)
    _print_skipped(report)


def load_json(path: Path) -> Report:
    """Read back what `write_json` wrote (to re-render a report without measuring again)."""
    data = json.loads(path.read_text())
    data["settings"] = Settings(**data["settings"])
    data["runs"] = [PathRun(**r) for r in data["runs"]]
    return Report(**data)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.report RESULTS.json RESULTS.md`: re-render a report from its JSON."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m bench.report RESULTS.json RESULTS.md", file=sys.stderr)
        return 2
    write_markdown(load_json(Path(args[0])), Path(args[1]))
    return 0


def _provenance(report: Report, rows: list[str]) -> str:
    source = report.versions.get("umbranet", "umbranet source unknown")
    return (
        f"{', '.join(rows) or 'no rows'}: `{report.command}` "
        f"({report.started} to {report.finished}; umbranet {source})"
    )


def _ordered(titles: dict[str, str]) -> list[str]:
    """Paths in the registry's order (JSON keeps keys sorted; the tables should not be)."""
    known = _path_order()
    return [p for p in known if p in titles] + [p for p in titles if p not in known]


def _path_order() -> tuple[str, ...]:
    from bench.paths.registry import KNOWN_PATHS

    return KNOWN_PATHS


def _print_skipped(report: Report) -> None:
    for p, why in report.skipped.items():
        print(f"{p}: skipped: {why}")


def _ratio_table(
    med: dict[str, dict[str, float]],
    paths: list[str],
    ref: str,
    percent_for_throughput: bool = False,
    invert: bool = False,
) -> list[str]:
    """Rows of `p / ref` (or `ref / p` when `invert`, i.e. Umbranet against each peer)."""
    rows = []
    for p in paths:
        cells = [p]
        for key in _RATIO_KEYS:
            num, den = (
                (med[ref].get(key), med[p].get(key))
                if invert
                else (med[p].get(key), med[ref].get(key))
            )
            if num is None or not den:
                cells.append("-")
            elif percent_for_throughput and _metric(key).higher_is_better:
                cells.append(f"{100 * num / den:.0f}%")
            else:
                cells.append(f"{num / den:.2f}x")
        rows.append(cells)
    return [*_table(["path", *[_metric(k).header for k in _RATIO_KEYS]], rows), ""]


def _targets(med: dict[str, dict[str, float]], ours: list[str]) -> list[str]:
    """The issue's goals, each as Umbranet's median against the bound it must meet."""
    neb, ssh = med["nebula"], med.get("ssh", {})
    goals = [
        ("1 stream >= 3x nebula", "tput1_gbps", 3 * neb.get("tput1_gbps", 0.0), True),
        ("1 stream >= ssh -L", "tput1_gbps", ssh.get("tput1_gbps"), True),
        ("64 B RR p50 <= nebula (1 CPU)", "rr_pin_p50", neb.get("rr_pin_p50"), False),
        ("64 B RR p50 <= nebula (default)", "rr_def_p50", neb.get("rr_def_p50"), False),
        (
            "dial+1RT p50 <= 1.5x nebula connect+1RT (1 CPU)",
            "conn_pin_p50",
            1.5 * neb.get("conn_pin_p50", 0.0),
            False,
        ),
        (
            "dial+1RT p50 <= 1.5x nebula connect+1RT (default)",
            "conn_def_p50",
            1.5 * neb.get("conn_def_p50", 0.0),
            False,
        ),
        # Not the target (later dials open in their session): shown so nothing is hidden.
        (
            "first dial+1RT p50 <= 1.5x nebula connect+1RT (1 CPU)",
            "conn1_pin_p50",
            1.5 * neb.get("conn_pin_p50", 0.0),
            False,
        ),
    ]
    return _goal_table(med, ours, goals)


def _network_targets(med: dict[str, dict[str, float]], l3: list[str]) -> list[str]:
    """Network mode's goals (issue 13): twice the userspace WireGuard peers' throughput,
    round trips no slower than theirs."""
    goals: list[tuple[str, str, float | None, bool]] = []
    for peer, name in (("wireguard", "wireguard-go"), ("nebula", "nebula")):
        theirs = med.get(peer)
        if theirs is None:
            continue
        for key, what in (("tput1_gbps", "1 stream"), ("tput4_gbps", "4 streams")):
            bound = theirs.get(key)
            goals.append((f"{what} >= 2x {name}", key, None if bound is None else 2 * bound, True))
        for key, where in (("rr_pin_p50", "1 CPU"), ("rr_def_p50", "default")):
            goals.append((f"64 B RR p50 <= {name} ({where})", key, theirs.get(key), False))
    return _goal_table(med, l3, goals)


def _goal_table(
    med: dict[str, dict[str, float]],
    ours: list[str],
    goals: list[tuple[str, str, float | None, bool]],
) -> list[str]:
    """A row per goal: the bound, then each path's median and whether it meets the bound."""
    rows = []
    for label, key, bound, higher in goals:
        metric = _metric(key)
        cells = [label, _fmt(bound, metric) if bound else "-"]
        for u in ours:
            value = med[u].get(key)
            if value is None or not bound:
                cells.append("-")
                continue
            met = value >= bound if higher else value <= bound
            cells.append(f"{_fmt(value, metric)} ({'met' if met else 'missed'})")
        rows.append(cells)
    return _table(["target", "bound", *ours], rows)


def _metric(key: str) -> Metric:
    for m in METRICS:
        if m.key == key:
            return m
    if key == _OTHER_LOAD.key:
        return _OTHER_LOAD
    if key.endswith("_retr"):
        return Metric(key, f"{key[:5].replace('tput', '')} stream retransmits", False)
    return Metric(key, key, False)


def _fmt(value: float | None, metric: Metric) -> str:
    if value is None:
        return "-"
    if metric.digits == 0 and abs(value) < 10 and value != int(value):
        return f"{value:.1f}"
    return f"{value:.{metric.digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
