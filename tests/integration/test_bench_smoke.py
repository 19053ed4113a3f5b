"""The benchmark harness must not rot: run `python -m bench --smoke` and read its report.

The full smoke run needs root (network namespaces) and iperf3 and is skipped otherwise; it
covers the raw paths, Umbranet through the agent (`umbranet-agent`) and the scale rows at
tiny sizes (idle circuits, per-core throughput, controller, policy). The target guard, the
`bench.rr` clients (the plug-in route Umbranet's SDK path may use) and merging a new report
into an old one are also checked without root, on 127.0.0.1. No timing thresholds anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # bench/ is a top-level directory, not an installed package
    sys.path.insert(0, str(REPO))

from bench import rr  # noqa: E402
from bench.measure import PathRun, Settings  # noqa: E402
from bench.report import Report, merge_reports, write_markdown  # noqa: E402
from bench.safety import TargetRefused, check_target  # noqa: E402


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (the harness creates network namespaces)"
    if shutil.which("iperf3") is None:
        return "iperf3 is not installed (apt-get install iperf3, or run bench/run once)"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def _row_throughput(report: str, path: str = "raw") -> float:
    """Column 2 ("TCP 1 stream Gbit/s") of `path`'s row in the first (medians) table."""
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == path:
            return float(cells[1])
    raise AssertionError(f"no {path} row in the report")


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.mark.root
@pytest.mark.slow
def test_smoke_run_reports_raw_throughput(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "RESULTS.md"
    before = _namespaces()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--no-install", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    assert _row_throughput(report, "raw") > 0
    assert _row_throughput(report, "umbranet-agent") > 0
    data = json.loads(out.with_suffix(".json").read_text())
    scale = data["scale"]
    assert scale["errors"] == [], scale["errors"]
    circuits = scale["circuits"]
    assert circuits["all_held"], circuits
    assert circuits["max_held"] >= circuits["target_circuits"]
    assert set(scale["per_core"]["levels"]) == {"1", "10", "100"}
    assert scale["controller"]["enrollments_per_s"] > 0
    assert scale["controller"]["tickets_per_s"] > 0
    assert scale["policy"]["tiny_run"]["rc"] == 0
    for figure in ("failover_pause", "path_setup", "revocation_close"):  # bench.failover
        assert "error" not in scale["failover"][figure], scale["failover"][figure]
    assert "mesh failover: stream pause" in report
    assert "## Scale" in report
    assert "router RSS per idle circuit" in report
    assert not {n for n in _namespaces() - before if n.startswith(("ubA-", "ubB-"))}


def _report(paths: dict[str, float], command: str, scale: dict[str, object]) -> Report:
    return Report(
        command=command,
        started="t0",
        finished="t1",
        settings=Settings(),
        runs_requested=1,
        facts={},
        versions={"umbranet": command},
        titles={p: f"the {p} path" for p in paths},
        runs=[PathRun(path=p, run=1, metrics={"tput1_gbps": v}) for p, v in paths.items()],
        scale=dict(scale),
    )


def test_merge_keeps_rows_it_did_not_measure(tmp_path: Path) -> None:
    old = _report({"raw": 20.0, "ssh": 5.0}, "old", {})
    new = _report({"ssh": 6.0, "umbranet-agent": 3.0}, "new", {"errors": []})
    merged = merge_reports(old, new)
    got = {r.path: r.metrics["tput1_gbps"] for r in merged.runs}
    assert got == {"raw": 20.0, "ssh": 6.0, "umbranet-agent": 3.0}
    assert list(merged.titles) == ["raw", "ssh", "umbranet-agent"]  # registry order
    assert len(merged.provenance) == 2
    assert "umbranet (ssh, umbranet-agent, scale)" in merged.versions
    out = tmp_path / "RESULTS.md"
    write_markdown(merged, out)
    text = out.read_text()
    assert "`old`" in text and "`new`" in text
    assert _row_throughput(text, "umbranet-agent") == 3.0


@pytest.mark.parametrize("host", ["8.8.8.8", "10.0.0.1", "198.20.0.1", "::1", "localhost"])
def test_target_guard_refuses_outside_ranges(host: str) -> None:
    with pytest.raises(TargetRefused):
        check_target(host)


@pytest.mark.parametrize("host", ["198.18.0.2", "198.19.255.1", "100.64.1.2", "127.0.0.1"])
def test_target_guard_allows_bench_ranges(host: str) -> None:
    assert check_target(host) == host


def test_rr_clients_against_loopback_servers() -> None:
    echo_port, sink_port = rr.start_servers("127.0.0.1", 0, 0)
    latency = rr.measure_latency(rr.tcp_dial("127.0.0.1", echo_port), count=50, warmup=5)
    assert latency["count"] == 50
    assert latency["p50_us"] <= latency["p99_us"]
    connect = rr.measure_connect(rr.tcp_dial("127.0.0.1", echo_port), count=10)
    assert connect["count"] == 10
    blast = rr.measure_blast(rr.tcp_dial("127.0.0.1", sink_port), seconds=0.2, streams=2)
    assert blast["errors"] == []
    assert blast["bytes"] > 0
