"""Rendering the scale rows (`bench.scale.run_scale`'s result) for RESULTS.md and the terminal.

Kept apart from `bench.report` because the scale rows are not per-path medians: each row is
one figure with, where the issue sets one, its target and whether it is met.
"""

from __future__ import annotations

from typing import Any

__all__ = ["POLICY_ROWS", "scale_markdown", "scale_rows"]

# The rows of POLICY_RESULTS.md carried into the report, in this order.
POLICY_ROWS = (
    "parse + validate + compile + run tests",
    "decisions/s, random requests",
    "view of one identity, mean of 2,000",
    "full recompute: all 100,000 views",
    "change: one rule edited + one group grown, recompile",
    "incremental recompute of the affected views",
)

TARGET_KIB = 16.0
TARGET_RATIO = 0.8


def scale_rows(scale: dict[str, Any]) -> list[list[str]]:
    """[row, result, target (met/missed)] for every scale figure that was measured."""
    rows: list[list[str]] = []
    c = scale.get("circuits") or {}
    if c:
        n = c.get("target_circuits", 0)
        held = next((r["held"] for r in c.get("stages", []) if r.get("target") == n), 0)
        rows.append(
            [
                f"router holds {n:,} concurrent idle circuits",
                f"{held:,} held",
                f"all {n:,} ({'met' if c.get('all_held') else 'missed'})",
            ]
        )
        kib = c.get("kib_per_circuit")
        if kib is not None:
            met = "met" if c.get("all_held") and kib <= TARGET_KIB else "missed"
            rows.append(
                [
                    f"router RSS per idle circuit ({n:,} held)",
                    f"{kib:.1f} KiB (PSS {c.get('pss_kib_per_circuit', 0):.1f} KiB)",
                    f"<= {TARGET_KIB:.0f} KiB ({met})",
                ]
            )
            rows.append(
                [
                    "client / host SDK process RSS per circuit (not the router's)",
                    f"{c.get('client_kib_per_circuit', 0):.1f} / "
                    f"{c.get('host_kib_per_circuit', 0):.1f} KiB",
                    "-",
                ]
            )
        rows.append(
            [
                "most circuits one router held (ramp)",
                f"{c.get('max_held', 0):,} ({c.get('ramp_stop', '?')})",
                "-",
            ]
        )
    p = scale.get("per_core") or {}
    levels = p.get("levels") or {}
    for n, level in levels.items():
        rows.append(
            [
                f"router bytes per router-CPU-second, {n} stream(s) (router on 1 CPU)",
                f"{level['bytes_per_router_cpu_s'] / 1e6:,.0f} MB/s "
                f"({level['gbps']:.2f} Gbit/s, router {level['router_cpu_pct']:.0f}% of a core)",
                "-",
            ]
        )
    if levels and all(len(lv.get("runs", [])) > 1 for lv in levels.values()):
        lo, hi = min(levels, key=int), max(levels, key=int)
        pairs = zip(levels[hi]["runs"], levels[lo]["runs"], strict=False)
        key = "bytes_per_router_cpu_s"
        p = {**p, "per_run_ratios": [most[key] / one[key] for most, one in pairs]}
    if "ratio_max_vs_1" in p and levels:
        ratio = p["ratio_max_vs_1"]
        most = max(levels, key=int)
        met = "met" if ratio >= TARGET_RATIO else "missed"
        rows.append(
            [
                f"per-core throughput, {most} streams vs 1",
                (
                    f"{ratio:.2f}x ({(1 - ratio) * 100:.0f}% drop)"
                    if ratio < 1
                    else f"{ratio:.2f}x (no drop)"
                )
                + (
                    " (run by run: " + " / ".join(f"{r:.2f}" for r in p["per_run_ratios"]) + ")"
                    if p.get("per_run_ratios")
                    else ""
                ),
                f">= {TARGET_RATIO:.2f}x, i.e. <= 20% drop ({met})",
            ]
        )
    ctl = scale.get("controller") or {}
    if ctl:
        runs = ctl.get("runs") or [{}]
        cpu_enroll = _median([r.get("controller_cpu_s", 0) for r in runs])
        rows.append(
            [
                f"controller enrollments/s ({ctl['enrollments']} concurrently, "
                f"{ctl['concurrency']} at a time)",
                f"{ctl['enrollments_per_s']:.0f}/s" + _runs(runs, "enrollments_per_s"),
                "-",
            ]
        )
        rows.append(
            [
                f"controller tickets/s ({ctl['tickets']} over {ctl['concurrency']} mTLS clients)",
                f"{ctl['tickets_per_s']:.0f}/s" + _runs(runs, "tickets_per_s"),
                "-",
            ]
        )
        ops = ctl["enrollments"] * 2 + ctl["tickets"]  # create + enroll + tickets
        rows.append(
            [
                "controller CPU per operation (identity create, enroll, ticket)",
                f"{1000 * cpu_enroll / max(ops, 1):.2f} ms",
                "-",
            ]
        )
    mesh = scale.get("mesh") or {}
    if mesh:
        where = f"{mesh['routers']:,} routers, {mesh['links']:,} links, {mesh['services']} services"
        for phase, what in (
            ("cold", "first reports"),
            ("steady", "steady reports"),
            ("reroute", "after a link dies"),
        ):
            row = mesh[phase]
            rows.append(
                [
                    f"controller mesh routes, {what} ({where}, simulated)",
                    f"{row['routes_per_s']:,} routes/s, {row['reports_per_s']:,} reports/s "
                    f"({row['cpu_s']:.2f} CPU s per round)",
                    "-",
                ]
            )
    rows += _failover_rows(scale.get("failover") or {})
    pol = scale.get("policy") or {}
    figures = pol.get("rows") or {}
    for label in sorted(figures, key=lambda x: POLICY_ROWS.index(x) if x in POLICY_ROWS else 99):
        rows.append([f"policy: {label}", figures[label], "-"])
    for label, value in ((pol.get("tiny_run") or {}).get("rows") or {}).items():
        if label.startswith(("parse + validate", "view of one identity, mean")):
            rows.append([f"policy (tiny live run): {label}", value, "-"])
    return rows


def _failover_rows(fail: dict[str, Any]) -> list[list[str]]:
    """`bench.failover.measure`: medians of its runs, in process on loopback."""
    rows = []
    for key, what in (
        (
            "failover_pause",
            f"mesh failover: stream pause when the router under it dies "
            f"({fail.get('mib')} MiB echo)",
        ),
        ("path_setup", "mesh path setup after a link dies (in-memory controller, no HTTP)"),
        ("revocation_close", "mesh revocation to stream closed, 2 router hops (router side)"),
    ):
        figure = fail.get(key)
        if not figure:
            continue
        if "error" in figure:
            rows.append([what, f"failed: {figure['error']}", "-"])
            continue
        runs = ", ".join(f"{v:g}" for v in figure["ms"])
        median = f"{figure['median_ms']:g} ms (median of {len(figure['ms'])}: {runs})"
        rows.append([what, median, "-"])
    return rows


def scale_markdown(scale: dict[str, Any]) -> list[str]:
    """The "Scale" section of RESULTS.md."""
    s = scale.get("settings", {})
    lines = [
        "## Scale",
        "",
        "Targets from the issue: one router holds 10,000 concurrent circuits at <= 16 KiB RSS "
        "each; its throughput per core falls by no more than 20% from 1 to 100 concurrent "
        "streams.",
        "",
        *_table(["row", "result", "target"], scale_rows(scale)),
        "",
        "How:",
        "",
        f"- Circuits: `bench.scale_client hold` in A opens end-to-end SDK streams to the SDK "
        f"host's echo over {s.get('contexts', '?')} router links (one 64 B round trip each, "
        "then idle); router VmRSS and PSS (`/proc/PID/status`, `smaps_rollup`) with every link "
        "open and no circuit, then with the circuits held; per circuit = difference / held. "
        f"Then more in steps of {s.get('ramp_step', 0):,} up to {s.get('max_circuits', 0):,} "
        f"while each step completes, within {s.get('ramp_seconds', 0):.0f} s in all and "
        f"{s.get('router_rss_budget_mib', 0)} MiB of router RSS. One pass (not a median).",
        f"- Per core: router pinned to CPU 0 (client and SDK host on the other CPUs); "
        f"{', '.join(map(str, s.get('stream_levels', [])))} concurrent SDK streams send "
        f"{s.get('level_bytes', 0) / (1 << 20):.0f} MiB in all to the host's sink; bytes "
        "delivered / router CPU seconds (user+system from /proc); median of "
        f"{s.get('repeats', 1)} run(s). The router's % of a core says whether it was the "
        "bottleneck (below 100%: the SDK client and host, sharing the other CPUs, were).",
        f"- Controller: `bench.scale_client controller` in A: {s.get('enrollments', 0)} "
        "identities created with tokens through the admin API, then enrolled concurrently "
        "(each makes its keys and CSR, as `umbra enroll` does; rate includes that client "
        f"work), then {s.get('tickets', 0)} dial tickets over {s.get('concurrency', 0)} mTLS "
        f"clients; median of {s.get('repeats', 1)} run(s).",
    ]
    pol = scale.get("policy") or {}
    if pol.get("rows"):
        lines.append(
            f"- Policy: from `{pol.get('source')}` ({pol.get('size', '?')}; measured "
            f"{pol.get('date', '?')}) by `bench/policy_scale.py`; see that file for every row."
        )
    c = scale.get("circuits") or {}
    if c.get("stages"):
        lines += ["", "Circuit stages:", ""]
        rows = [
            [
                f"{r['held']:,}",
                "yes" if r["ok"] else "no",
                str(r.get("seconds")),
                f"{r['router_rss_kib'] / 1024:.1f}",
                f"{r.get('router_rss_kib_per_circuit', 0):.1f}",
                f"{r.get('router_pss_kib_per_circuit', 0):.1f}",
                f"{r['client_rss_kib'] / 1024:.0f} / {r['host_rss_kib'] / 1024:.0f}",
            ]
            for r in c["stages"]
        ]
        base = c.get("baseline_kib", {})
        lines.append(
            f"Baseline (links open, no circuit): router RSS "
            f"{base.get('router_rss', 0) / 1024:.1f} MiB, PSS "
            f"{base.get('router_pss', 0) / 1024:.1f} MiB."
        )
        lines.append("")
        lines += _table(
            [
                "held",
                "complete",
                "seconds to open",
                "router RSS MiB",
                "router KiB/circuit",
                "router PSS KiB/circuit",
                "client / host RSS MiB",
            ],
            rows,
        )
    errors = scale.get("errors") or []
    if errors:
        lines += ["", *[f"- scale error: {e}" for e in errors]]
    return [*lines, ""]


def _runs(runs: list[dict[str, Any]], key: str) -> str:
    if len(runs) < 2:
        return ""
    return " (runs: " + " / ".join(f"{r.get(key, 0):.0f}" for r in runs) + ")"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out
