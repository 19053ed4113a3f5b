"""`python -m bench`: measure Umbranet and its peers side by side and write bench/RESULTS.md.

Needs root (network namespaces). One invocation: install missing Debian packages (unless
--no-install), build the namespaces, start the servers in B, then for each run measure every
path in turn (setup, measure, teardown), then the scale rows (`bench.scale`: in a full run,
with --scale, and at tiny sizes with --smoke), and finally tear everything down and write the
report (with --merge, into the rows --out already holds). Cleanup runs on success, error,
Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from bench import failover, mesh_scale, procfs
from bench.deps import HARNESS_BINARIES, install_packages
from bench.machine import machine_facts
from bench.measure import Measurer, PathRun, Servers, Settings
from bench.netns import Topology
from bench.paths import ECHO_PORT, IPERF_PORT, SINK_PORT, BenchPath, have_binary, tool_version
from bench.paths.registry import DEFAULT_PATHS, KNOWN_PATHS, make_path
from bench.report import Report, load_json, merge_reports, print_table, write_json, write_markdown
from bench.scale import ScaleSettings, run_scale

REPO = Path(__file__).resolve().parent.parent
SMOKE_PATHS = ("raw", "rawpy", "umbranet-agent")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    names = _select(args)
    scale = _scale_settings(args)
    settings = _settings(args)
    _ensure_importable()
    signal.signal(signal.SIGTERM, _sigterm)

    paths = {n: make_path(n) for n in names}
    skipped = _prepare_tools(paths, install=not args.no_install)
    missing = [b for b in HARNESS_BINARIES if not have_binary(b)]
    if missing:
        print(f"bench: missing required tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    active = [n for n in names if n not in skipped]
    report = Report(
        command=f"{Path(sys.executable).name} -m bench {shlex.join(argv)}".strip(),
        started=_now(),
        finished="",
        settings=settings,
        runs_requested=args.runs,
        facts=machine_facts(),
        versions=_versions(paths, active),
        titles={n: paths[n].title for n in names},
        skipped=skipped,
    )
    if scale is not None:
        report.versions.update(make_path("umbranet").versions())
    for n, why in skipped.items():
        _log(f"skipping {n}: {why}")
    out = Path(args.out).resolve()
    try:
        _run_all(report, active, settings, args.runs, scale)
    except KeyboardInterrupt:
        report.notes.append("interrupted before the end: results are partial")
        _log("interrupted; cleaned up")
    report.finished = _now()
    report.facts["loadavg at end"] = Path("/proc/loadavg").read_text().strip()
    if args.merge and out.with_suffix(".json").exists():
        report = merge_reports(load_json(out.with_suffix(".json")), report)
        _log(f"merged into the rows already in {out.with_suffix('.json').name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(report, out)
    write_json(report, out.with_suffix(".json"))
    print_table(report)
    _log(f"wrote {out} and {out.with_suffix('.json').name}")
    return 130 if report.notes and "interrupted" in report.notes[-1] else 0


def _run_all(
    report: Report, active: list[str], settings: Settings, runs: int, scale: ScaleSettings | None
) -> None:
    topo = Topology()
    workdir = Path(tempfile.mkdtemp(prefix="ub-bench-"))
    try:
        _log(f"namespaces {topo.a.name} ({topo.a.addr}) <-> {topo.b.name} ({topo.b.addr})")
        topo.create()
        servers = _start_servers(topo, workdir, settings)
        own = frozenset({topo.a.inode(), topo.b.inode()})
        measurer = Measurer(settings, servers, _log, own)
        for run in range(1, runs + 1):
            for name in active:
                servers = _check_servers(topo, servers, workdir, settings)
                measurer.servers = servers
                _log(f"run {run}/{runs}: {name}")
                report.runs.append(_one(topo, measurer, name, run, workdir))
        if scale is not None:
            keep = [p for s in (servers.iperf, servers.rr) for p in procfs.tree_pids(s)]
            topo.kill_leftovers(keep)
            report.scale = run_scale(topo, workdir, scale, settings.env, _log)
            # The controller's route computation for 1,000 routers (in process, simulated).
            size = (100, 10) if scale.policy_smoke else (1000, 50)
            report.scale["mesh"] = mesh_scale.measure(*size)
            # Mesh failover in process: stream pause, path setup, revocation across 2 hops.
            tries = 2 if scale.policy_smoke else max(5, runs)
            _log(f"mesh failover rows: {tries} runs each")
            report.scale["failover"] = failover.measure(tries, 16)
    finally:
        topo.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


def _one(topo: Topology, measurer: Measurer, name: str, run: int, workdir: Path) -> PathRun:
    path: BenchPath = make_path(name)
    tmp = workdir / f"run{run}-{name}"
    tmp.mkdir(mode=0o700)
    t0 = time.monotonic()
    try:
        endpoints = path.setup(topo.a, topo.b, tmp)
        result = measurer.measure_path(name, run, endpoints)
    except Exception as exc:  # one broken path must not stop the others
        result = PathRun(path=name, run=run, errors=[f"setup/measure failed: {exc!r}"[:400]])
    finally:
        path.teardown()
        keep = [
            p for s in (measurer.servers.iperf, measurer.servers.rr) for p in procfs.tree_pids(s)
        ]
        topo.kill_leftovers(keep)
    status = "; ".join(result.errors) or "ok"
    _log(f"  {name} run {run} done in {time.monotonic() - t0:.0f} s: {_summary(result)} [{status}]")
    return result


def _start_servers(topo: Topology, workdir: Path, settings: Settings) -> Servers:
    iperf = topo.b.spawn(
        ["iperf3", "-s", "-p", str(IPERF_PORT), "--rcv-timeout", "15000"],
        workdir / "iperf3-server.log",
    )
    rr = topo.b.spawn(
        [
            settings.python,
            "-m",
            "bench.rr",
            "serve",
            "--echo-port",
            str(ECHO_PORT),
            "--sink-port",
            str(SINK_PORT),
        ],
        workdir / "rr-server.log",
        settings.env,
    )
    for port in (IPERF_PORT, ECHO_PORT, SINK_PORT):
        topo.b.wait_listen(port)
    return Servers(iperf=iperf, rr=rr)


def _check_servers(topo: Topology, servers: Servers, workdir: Path, settings: Settings) -> Servers:
    """Restart the servers in B if one of them died (a crashed server would fail every path)."""
    if topo.procs.alive(servers.iperf) and topo.procs.alive(servers.rr):
        return servers
    _log("a server in B died; restarting both")
    topo.procs.stop(servers.iperf, servers.rr)
    return _start_servers(topo, workdir, settings)


def _prepare_tools(paths: dict[str, BenchPath], install: bool) -> dict[str, str]:
    """Install what is missing (unless told not to); return {path: why it cannot run}."""
    needed = dict(HARNESS_BINARIES)
    for p in paths.values():
        needed.update(p.binaries)
    packages = {pkg for binary, pkg in needed.items() if not have_binary(binary)}
    failed = install_packages(packages, _log) if install and packages else {}
    skipped: dict[str, str] = {}
    for name, p in paths.items():
        why = p.unavailable()
        if why is None:
            continue
        bad = sorted(pkg for pkg in p.binaries.values() if pkg in failed)
        if bad:
            why = f"could not install {', '.join(bad)} ({failed[bad[0]]})"
        elif not install and any(not have_binary(b) for b in p.binaries):
            why += " (and --no-install was given)"
        skipped[name] = why
    return skipped


def _versions(paths: dict[str, BenchPath], active: list[str]) -> dict[str, str]:
    versions = {
        "iperf3": tool_version(["iperf3", "--version"]),
        "iproute2": tool_version(["ip", "-V"]),
    }
    for n in active:
        versions.update(paths[n].versions())
    return versions


def _summary(r: PathRun) -> str:
    m = r.metrics
    parts = []
    if "tput1_gbps" in m:
        parts.append(f"{m['tput1_gbps']:.2f} Gbit/s")
    if "rr_pin_p50" in m:
        parts.append(f"RR {m['rr_pin_p50']:.0f}/{m.get('rr_def_p50', 0):.0f} µs")
    if "conn_pin_p50" in m:
        parts.append(f"connect {m['conn_pin_p50']:.0f}/{m.get('conn_def_p50', 0):.0f} µs")
    return ", ".join(parts) or "no numbers"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--paths",
        default="",
        help=f"comma list of {','.join(KNOWN_PATHS)} "
        f"(default: {','.join(DEFAULT_PATHS)}; with --smoke: {','.join(SMOKE_PATHS)})",
    )
    p.add_argument("--runs", type=int, default=3, help="runs per path; medians are reported")
    p.add_argument("--seconds", type=int, default=10, help="iperf3 -t per throughput test")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one run (for CI, < 90 s)")
    p.add_argument(
        "--scale",
        action="store_true",
        help="the scale rows (router memory per circuit, per-core throughput, controller, "
        "policy); alone unless --paths is given too. A full run (no --paths) includes them",
    )
    p.add_argument("--no-scale", action="store_true", help="leave the scale rows out")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows in --out's JSON that this invocation does not measure",
    )
    p.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"), help="report file")
    p.add_argument("--no-install", action="store_true", help="never call apt-get")
    p.add_argument(
        "--quiet-budget",
        type=float,
        default=Settings.quiet_budget,
        help="seconds in total to wait for other load to stop before measurements "
        f"(default {Settings.quiet_budget:.0f}; raise it on a shared machine)",
    )
    return p


def _select(args: argparse.Namespace) -> list[str]:
    if args.scale and not args.paths:
        return []
    if args.paths:
        names = [n.strip() for n in args.paths.split(",") if n.strip()]
    else:
        names = list(SMOKE_PATHS if args.smoke else DEFAULT_PATHS)
    unknown = [n for n in names if n not in KNOWN_PATHS]
    if unknown:
        raise SystemExit(
            f"bench: unknown path(s) {', '.join(unknown)}; known: {', '.join(KNOWN_PATHS)}"
        )
    return list(dict.fromkeys(names))


def _scale_settings(args: argparse.Namespace) -> ScaleSettings | None:
    """Scale rows: with --scale, in a full run (no --paths) and in smoke mode (tiny)."""
    if args.no_scale or not (args.scale or args.smoke or not args.paths):
        return None
    return ScaleSettings.smoke() if args.smoke else ScaleSettings(repeats=max(1, args.runs))


def _settings(args: argparse.Namespace) -> Settings:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        x for x in (str(REPO), str(REPO / "src"), env.get("PYTHONPATH", "")) if x
    )
    if args.smoke:
        args.runs = 1
        return Settings(
            iperf_seconds=1,
            rr_count=200,
            rr_warmup=10,
            conn_count=20,
            probe_wait=10,
            python=sys.executable,
            env=env,
            quiet_max_wait=0,
            quiet_budget=0,
            blast_min_bytes=0,
        )
    if args.runs < 1 or args.seconds < 1:
        raise SystemExit("bench: --runs and --seconds must be at least 1")
    return Settings(
        iperf_seconds=args.seconds,
        python=sys.executable,
        env=env,
        quiet_budget=args.quiet_budget,
    )


def _ensure_importable() -> None:
    """Let the harness (and the umbranet path's availability check) import the source tree."""
    for p in (str(REPO / "src"), str(REPO)):
        if p not in sys.path:
            sys.path.insert(0, p)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the finally blocks that clean up


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
