"""The scale rows: router memory per idle circuit, router throughput per core from 1 to 100
streams, controller enrollments/s and tickets/s, and the policy engine's figures.

Why these: the issue's targets are "one router holds 10,000 concurrent circuits at <= 16 KiB
RSS each" and "throughput per router core does not fall by more than 20% from 1 to 100
concurrent streams"; the controller and policy rows say how far one controller goes.

All of it runs on the same throwaway network as the `umbranet` path (controller, router and an
SDK host in namespace B, built by `bench.paths.umbranet.Umbranet.setup`), with clients in A:

- circuits: `bench.scale_client hold` opens N end-to-end streams (one 64 B round trip each,
  then idle) over a few router links; the router's VmRSS and PSS (smaps_rollup) are read
  with every link open and no circuit, and again with N held. Then it ramps in steps up to a
  cap while each step completes within its time budget and the router stays within a memory
  budget. Client and host RSS are reported too (they are not the router's).
- per core: the router pinned to CPU 0 (client and host to the other CPUs when there are
  any); 1, 10 and 100 concurrent SDK streams each send a bounded share of a fixed total to
  the host's sink; bytes delivered / router CPU seconds, and the ratio 100 vs 1. This is
  the router's cost per byte; whether the router or the SDK ends is the bottleneck shows in
  the router's % of a core.
- controller: `bench.scale_client controller` (K enrollments concurrently, M tickets over C
  mTLS clients), with the controller process's CPU per operation.
- policy: the figures in `bench/POLICY_RESULTS.md` (`bench.policy_scale`, full size); the
  smoke run also runs `policy_scale` at a tiny size so it cannot rot.

    sudo .venv/bin/python -m bench.scale            # = python -m bench --scale --merge
    sudo .venv/bin/python -m bench --scale --smoke  # tiny sizes
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import procfs
from bench.measure import run_client
from bench.netns import Topology
from bench.paths.umbranet import Umbranet
from bench.report_scale import POLICY_ROWS

__all__ = ["ScaleSettings", "main", "policy_figures", "run_scale"]

Log = Callable[[str], None]
REPO = Path(__file__).resolve().parent.parent
POLICY_FILE = REPO / "bench" / "POLICY_RESULTS.md"


@dataclass(frozen=True)
class ScaleSettings:
    circuits: int = 10_000
    max_circuits: int = 50_000
    ramp_step: int = 10_000
    ramp_seconds: float = 600.0  # all stages together
    router_rss_budget_mib: int = 4096  # stop ramping beyond this router RSS
    contexts: int = 4  # router links the circuits are spread over
    stream_levels: tuple[int, ...] = (1, 10, 100)
    level_bytes: int = 1 << 30  # per level and repeat, split over the streams
    enrollments: int = 200
    tickets: int = 2000
    concurrency: int = 8
    repeats: int = 3  # per-core and controller rows: medians of this many
    policy_smoke: bool = False  # run bench.policy_scale at a tiny size too

    @classmethod
    def smoke(cls) -> ScaleSettings:
        return cls(
            circuits=200,
            max_circuits=400,
            ramp_step=200,
            ramp_seconds=60.0,
            contexts=2,
            level_bytes=8 << 20,
            enrollments=20,
            tickets=100,
            concurrency=4,
            repeats=1,
            policy_smoke=True,
        )


def run_scale(
    topo: Topology, workdir: Path, s: ScaleSettings, env: Mapping[str, str], log: Log
) -> dict[str, Any]:
    """All scale rows on one throwaway network; errors are recorded per row, never raised."""
    result: dict[str, Any] = {"settings": asdict(s), "errors": []}
    tmp = workdir / "scale"
    tmp.mkdir(mode=0o700)
    path = Umbranet()
    try:
        log("scale: building the network (controller, router, SDK host)")
        ep = path.setup(topo.a, topo.b, tmp)
        net = _Net(topo, tmp, ep.cpu_pids, dict(env))
        # Circuits first: the router's heap has not yet grown for bulk transfers, so its
        # memory growth is the circuits' alone.
        rows: tuple[tuple[str, Callable[[_Net, ScaleSettings, Log], dict[str, Any]]], ...] = (
            ("circuits", _circuits),
            ("per_core", _per_core),
            ("controller", _controller),
        )
        for name, fn in rows:
            try:
                result[name] = fn(net, s, log)
            except Exception as exc:  # one broken row must not lose the others
                result["errors"].append(f"{name}: {exc!r}"[:400])
                log(f"scale: {name} failed: {exc!r}")
    except Exception as exc:
        result["errors"].append(f"setup: {exc!r}"[:400])
    finally:
        path.teardown()
        topo.kill_leftovers()
    result["policy"] = policy_figures(s.policy_smoke, env, log)
    return result


def policy_figures(run_tiny: bool, env: Mapping[str, str], log: Log) -> dict[str, Any]:
    """The full-size figures from POLICY_RESULTS.md, plus a tiny live run when asked."""
    out: dict[str, Any] = {"source": "bench/POLICY_RESULTS.md", "rows": {}}
    if POLICY_FILE.exists():
        text = POLICY_FILE.read_text()
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 2 and cells[0] in POLICY_ROWS:
                out["rows"][cells[0]] = cells[1]
            if line.startswith("- date:"):
                out["date"] = line.removeprefix("- date:").strip()
            if line.startswith("- size:"):
                out["size"] = line.removeprefix("- size:").strip()
    if run_tiny:
        log("scale: policy_scale at a tiny size")
        argv = [sys.executable, "-m", "bench.policy_scale", "--identities", "500"]
        argv += ["--services", "50", "--rules", "50", "--decisions", "2000"]
        argv += ["--view-sample", "50", "--no-write"]
        proc = subprocess.run(
            ["timeout", "-k", "5", "120", *argv],
            cwd=REPO,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=140,
            check=False,
        )
        tiny = {}
        for line in proc.stdout.splitlines():
            parts = [p for p in line.strip().split("  ") if p.strip()]
            if line.startswith("  ") and len(parts) >= 2:
                tiny[parts[0].strip()] = parts[-1].strip()
        out["tiny_run"] = {"rc": proc.returncode, "rows": tiny}
    return out


# -- the network ----------------------------------------------------------------------------


@dataclass
class _Net:
    topo: Topology
    tmp: Path
    pids: Mapping[str, int]  # label -> root PID (the `timeout` wrapper)
    env: dict[str, str]

    @property
    def router(self) -> int:
        return self.pids["router(B)"]

    @property
    def host(self) -> int:
        return self.pids["host SDK(B)"]

    @property
    def controller(self) -> int:
        return self.pids["controller(B)"]

    def identity(self, name: str) -> str:
        return str(self.tmp / "ids" / f"{name}.json")

    def client(self, argv: list[str], limit: float, cpus: str = "") -> Any:
        pin = ["taskset", "-c", cpus] if cpus else []
        bounded = ["timeout", "-k", "5", str(int(limit)), *pin, sys.executable, "-m", *argv]
        res = run_client(self.topo.a.argv(bounded), limit, self.env)
        return res


def memory_kib(root: int) -> tuple[int, int]:
    """(VmRSS, PSS) in KiB of the Python processes in the tree under `root`."""
    rss = pss = 0
    for pid in procfs.tree_pids(root):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() in ("timeout", "ip", "taskset"):
                continue
            status = Path(f"/proc/{pid}/status").read_text()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        rss += _kib(status, "VmRSS:")
        pss += _kib(rollup, "Pss:")
    return rss, pss


def _kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


# -- (a) idle circuits ------------------------------------------------------------------------


def _circuits(net: _Net, s: ScaleSettings, log: Log) -> dict[str, Any]:
    stages = [s.circuits]
    while stages[-1] + s.ramp_step <= s.max_circuits:
        stages.append(stages[-1] + s.ramp_step)
    argv = ["bench.scale_client", "hold", "--identity", net.identity("dialer")]
    argv += ["--contexts", str(s.contexts), "--stages", ",".join(map(str, stages))]
    argv += ["--stage-seconds", str(int(s.ramp_seconds))]
    limit = int(s.ramp_seconds + 120)
    cmd = ["timeout", "-k", "5", str(limit), sys.executable, "-m", *argv]
    log(f"scale: circuits: {s.circuits:,} idle, then ramp to {s.max_circuits:,} at most")
    proc = subprocess.Popen(
        net.topo.a.argv(cmd),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=net.env,
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    out: dict[str, Any] = {"stages": [], "contexts": s.contexts}
    base: dict[str, int] = {}
    t0 = time.monotonic()
    stop_reason = "the client ended early (see the scale errors)"
    try:
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            time.sleep(1.0)  # let the last replies and frees settle before reading memory
            router_rss, router_pss = memory_kib(net.router)
            host_rss, _ = memory_kib(net.host)
            client_rss, _ = memory_kib(proc.pid)
            if msg["stage"] == 0:
                base = {"router_rss": router_rss, "router_pss": router_pss}
                base |= {"host_rss": host_rss, "client_rss": client_rss}
                out["baseline_kib"] = base
                log(f"    baseline: router RSS {router_rss / 1024:.1f} MiB (links open)")
                if not msg.get("ok"):
                    stop_reason = f"warm-up failed: {msg.get('errors')}"
                    break
                _send(proc, "next")
                continue
            held = int(msg["held"])
            row = {
                "target": msg.get("target"),
                "held": held,
                "ok": bool(msg.get("ok")),
                "seconds": msg.get("seconds"),
                "router_rss_kib": router_rss,
                "router_pss_kib": router_pss,
                "host_rss_kib": host_rss,
                "client_rss_kib": client_rss,
                "errors": msg.get("errors", []),
                "error_count": msg.get("error_count", 0),
            }
            if held:
                row["router_rss_kib_per_circuit"] = (router_rss - base["router_rss"]) / held
                row["router_pss_kib_per_circuit"] = (router_pss - base["router_pss"]) / held
                row["host_rss_kib_per_circuit"] = (host_rss - base["host_rss"]) / held
                row["client_rss_kib_per_circuit"] = (client_rss - base["client_rss"]) / held
            out["stages"].append(row)
            log(
                f"    {held:,} circuits held ({'ok' if row['ok'] else 'incomplete'}, "
                f"{msg.get('seconds')} s): router RSS {router_rss / 1024:.1f} MiB, "
                f"{row.get('router_rss_kib_per_circuit', 0):.1f} KiB/circuit"
            )
            if not row["ok"]:
                stop_reason = f"stage incomplete: {row['errors'][:2]}"
                break
            if router_rss > s.router_rss_budget_mib * 1024:
                stop_reason = f"router RSS over the {s.router_rss_budget_mib} MiB budget"
                break
            if time.monotonic() - t0 > s.ramp_seconds:
                stop_reason = f"ramp time budget ({s.ramp_seconds:.0f} s) used up"
                break
            if held >= stages[-1]:
                stop_reason = "reached the cap"
                break
            _send(proc, "next")
        else:
            stop_reason += f": {proc.stderr.read()[-300:] if proc.stderr else ''}"
    finally:
        _send(proc, "stop")
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
    first = next((r for r in out["stages"] if r["target"] == s.circuits), None)
    held_ok = [r["held"] for r in out["stages"] if r["ok"]]
    out["target_circuits"] = s.circuits
    out["all_held"] = bool(first and first["ok"] and first["held"] >= s.circuits)
    if first and "router_rss_kib_per_circuit" in first:
        out["kib_per_circuit"] = first["router_rss_kib_per_circuit"]
        out["pss_kib_per_circuit"] = first["router_pss_kib_per_circuit"]
        out["host_kib_per_circuit"] = first["host_rss_kib_per_circuit"]
        out["client_kib_per_circuit"] = first["client_rss_kib_per_circuit"]
    out["max_held"] = max(held_ok, default=0)
    out["ramp_stop"] = stop_reason
    out["wall_s"] = round(time.monotonic() - t0, 1)
    out["settle_s"] = _settle([net.router, net.host])
    return out


def _settle(roots: list[int], limit: float = 60.0) -> float:
    """Wait (bounded) until the trees are idle: the circuits' teardown must not be billed to
    the next row's CPU accounting."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        c0 = procfs.cpu_seconds(roots)
        time.sleep(0.5)
        if procfs.cpu_seconds(roots) - c0 < 0.05:
            break
    return round(time.monotonic() - t0, 1)


def _send(proc: subprocess.Popen[str], line: str) -> None:
    try:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass  # the client already finished


# -- (b) per-core throughput ------------------------------------------------------------------


def _per_core(net: _Net, s: ScaleSettings, log: Log) -> dict[str, Any]:
    ncpu = os.cpu_count() or 1
    others = ",".join(str(c) for c in range(1, ncpu)) if ncpu > 1 else ""
    procfs.set_affinity([net.router], {0})
    if others:
        procfs.set_affinity([net.host], set(range(1, ncpu)))
    levels: dict[str, Any] = {}
    try:
        for n in s.stream_levels:
            runs = []
            for rep in range(s.repeats):
                log(f"scale: per core: {n} stream(s), run {rep + 1}/{s.repeats}")
                cpu0 = procfs.cpu_seconds([net.router])
                argv = ["bench.paths.umbranet_async_client", "blast"]
                argv += ["--identity", net.identity("dialer"), "--streams", str(n)]
                argv += ["--seconds", "0.1", "--min-bytes", str(s.level_bytes)]
                argv += ["--max-seconds", "120"]
                res = net.client(argv, 180, others)
                cpu = procfs.cpu_seconds([net.router]) - cpu0
                data = res.json()
                if data.get("errors") or not data.get("bytes"):
                    raise RuntimeError(f"blast with {n} streams: {data.get('errors')}")
                runs.append(
                    {
                        "bytes": data["bytes"],
                        "seconds": data["seconds"],
                        "router_cpu_s": cpu,
                        "bytes_per_router_cpu_s": data["bytes"] / max(cpu, 1e-3),
                        "gbps": data["bits_per_second"] / 1e9,
                    }
                )
            levels[str(n)] = {
                "runs": runs,
                "bytes_per_router_cpu_s": statistics.median(
                    r["bytes_per_router_cpu_s"] for r in runs
                ),
                "gbps": statistics.median(r["gbps"] for r in runs),
                "router_cpu_pct": statistics.median(
                    100 * r["router_cpu_s"] / max(r["seconds"], 1e-9) for r in runs
                ),
            }
    finally:
        everything = set(range(ncpu))
        procfs.set_affinity([net.router, net.host], everything)
    lo, hi = str(min(s.stream_levels)), str(max(s.stream_levels))
    ratio = levels[hi]["bytes_per_router_cpu_s"] / levels[lo]["bytes_per_router_cpu_s"]
    return {"levels": levels, "ratio_max_vs_1": ratio, "pinned": "router on CPU 0"}


# -- (c) controller ----------------------------------------------------------------------------


def _controller(net: _Net, s: ScaleSettings, log: Log) -> dict[str, Any]:
    runs = []
    for rep in range(s.repeats):
        log(
            f"scale: controller: {s.enrollments} enrollments, {s.tickets} tickets "
            f"(run {rep + 1}/{s.repeats})"
        )
        cpu0 = procfs.cpu_seconds([net.controller])
        argv = ["bench.scale_client", "controller", "--home", str(net.tmp / "home")]
        argv += ["--identity", net.identity("dialer"), "--enrollments", str(s.enrollments)]
        argv += ["--tickets", str(s.tickets), "--concurrency", str(s.concurrency)]
        res = net.client(argv, 600)
        data = res.json()
        data["controller_cpu_s"] = procfs.cpu_seconds([net.controller]) - cpu0
        data["client_cpu_s"] = res.cpu_s
        if data.get("error_count"):
            raise RuntimeError(f"controller run: {data.get('errors')}")
        runs.append(data)
    return {
        "runs": runs,
        "enrollments_per_s": statistics.median(r["enrollments_per_s"] for r in runs),
        "tickets_per_s": statistics.median(r["tickets_per_s"] for r in runs),
        "enrollments": s.enrollments,
        "tickets": s.tickets,
        "concurrency": s.concurrency,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.scale [bench options]`: the scale rows alone, merged into RESULTS."""
    from bench.__main__ import main as bench_main

    args = list(sys.argv[1:] if argv is None else argv)
    return bench_main(["--scale", "--merge", *args])


if __name__ == "__main__":
    raise SystemExit(main())
