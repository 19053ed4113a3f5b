"""Measuring one path once: probe, request/response, connect (two scheduling modes), throughput.

Clients run inside namespace A through `ip netns exec`, each bounded by `timeout` and by its
count or duration. CPU is read from /proc for the path's daemons and the server, and from the
client's own rusage (wait4), so "CPU seconds per GB" covers every process the bytes pass through
(kernel softirq work that lands outside those processes is not in it).

"1 CPU" mode pins the client, the path's daemons and the echo server to CPU 0: that is the
software cost of the path. "default" leaves scheduling alone: that is what a user sees, and on
small VMs it includes cross-CPU wake-ups (see the anchors' NOTES.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bench import procfs
from bench.paths import Endpoints, PyClient, TcpTarget
from bench.safety import check_target

__all__ = ["ClientResult", "Measurer", "PathRun", "Servers", "Settings", "run_client"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    iperf_seconds: int = 10
    # Python (PyClient) blasts send at least this much even if that takes longer than
    # iperf_seconds (a slow path still moves >= 1 GiB), but stop at blast_max_seconds.
    blast_min_bytes: int = 1 << 30
    blast_max_seconds: float = 90.0
    rr_count: int = 2000
    rr_warmup: int = 50
    conn_count: int = 200
    probe_wait: float = 30.0
    python: str = "python3"
    env: Mapping[str, str] = field(default_factory=dict)  # for Python clients (PYTHONPATH)
    quiet_max_wait: float = 20.0  # per measurement: wait this long at most for an idle machine
    quiet_budget: float = 180.0  # per invocation: total waiting allowed


@dataclass(frozen=True)
class Servers:
    """Root PIDs of the harness's servers in namespace B."""

    iperf: int
    rr: int


@dataclass
class PathRun:
    """One path, one run: flat metrics (for medians) plus raw details, notes and errors."""

    path: str
    run: int
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ClientResult:
    rc: int
    stdout: str
    stderr: str
    cpu_s: float  # user+system of the client and its reaped children
    wall_s: float

    def json(self) -> dict[str, Any]:
        """The last JSON object the client printed (iperf3 -J prints one multi-line object)."""
        text = self.stdout.strip()
        if not text:
            raise ValueError(f"no output (rc={self.rc}): {self.stderr.strip()[-300:]}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = json.loads(text.splitlines()[-1])
        if not isinstance(value, dict):
            raise ValueError("client output is not a JSON object")
        return value


def run_client(
    argv: list[str], timeout: float, env: Mapping[str, str] | None = None
) -> ClientResult:
    """Run a bounded client; collect output and its CPU time from wait4's rusage."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )
        status, usage = 0, None
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() - t0 > timeout + 15:  # the inner `timeout` should fire first
                    os.killpg(proc.pid, signal.SIGKILL)
                time.sleep(0.02)
        finally:
            proc.returncode = os.waitstatus_to_exitcode(status) if usage is not None else -9
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        cpu = usage.ru_utime + usage.ru_stime if usage is not None else 0.0
        return ClientResult(
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            cpu,
            wall,
        )


class Measurer:
    """Runs the measurements of one invocation; keeps the quiet-wait budget across paths.

    Other jobs may share the machine. Before each measurement it waits (bounded) for an idle
    machine; during it, it adds up the CPU of processes outside our namespaces ("other load"),
    and measures once more when that exceeded `OTHER_MAX_PCT` of a core (the second try is
    kept, and flagged if it was disturbed too).
    """

    OTHER_MAX_PCT = 15.0

    def __init__(
        self, settings: Settings, servers: Servers, log: Log, own_netns: frozenset[int]
    ) -> None:
        self.s = settings
        self.servers = servers
        self.log = log
        self.own_netns = own_netns
        self._quiet_left = settings.quiet_budget
        self._all_cpus = os.sched_getaffinity(0)

    def measure_path(self, name: str, run: int, ep: Endpoints) -> PathRun:
        r = PathRun(path=name, run=run, notes=list(ep.notes))
        tunnel = dict(ep.cpu_pids)
        probe = self._client(
            ep.rr, "probe", ["--wait", str(self.s.probe_wait)], self.s.probe_wait + 15
        )
        try:
            r.details["probe"] = probe.json()
        except ValueError as exc:
            r.errors.append(f"probe: {exc}")
            return r
        if not r.details["probe"].get("ok"):
            r.errors.append(f"probe: path never carried traffic ({r.details['probe']})")
            return r
        rr_args = ["--count", str(self.s.rr_count), "--warmup", str(self.s.rr_warmup)]
        conn_args = ["--count", str(self.s.conn_count)]
        pinnable = [self.servers.rr, *tunnel.values()]
        for mode in ("def", "pin"):
            if mode == "pin":
                procfs.set_affinity(pinnable, {0})
            try:
                self._attempt(r, f"rr_{mode}", partial(self._rr, r, ep, mode, "latency", rr_args))
                self._attempt(
                    r, f"conn_{mode}", partial(self._rr, r, ep, mode, "connect", conn_args)
                )
                if isinstance(ep.rr, PyClient) and ep.rr.first_dial:
                    first = partial(self._rr, r, ep, mode, "connect-first", conn_args)
                    self._attempt(r, f"conn1_{mode}", first)
            finally:
                if mode == "pin":
                    procfs.set_affinity(pinnable, self._all_cpus)
        for n in (1, 4):
            self._attempt(r, f"tput{n}", partial(self._throughput, r, ep, n, tunnel))
        return r

    # -- one measurement each ------------------------------------------------------------

    def _attempt(self, r: PathRun, key: str, action: Callable[[], None]) -> None:
        """Run one measurement (twice if other processes disturbed the first try)."""
        other = 0.0
        for attempt in (1, 2):
            self._wait_quiet(r, key)
            c0, t0 = procfs.foreign_cpu_seconds(self.own_netns), time.monotonic()
            action()
            elapsed = max(1e-6, time.monotonic() - t0)
            other = max(0.0, 100 * (procfs.foreign_cpu_seconds(self.own_netns) - c0) / elapsed)
            r.details.setdefault("other_load_pct", {})[key] = round(other, 1)
            if other <= self.OTHER_MAX_PCT or attempt == 2 or self._quiet_left <= 0:
                break
            self.log(f"    other processes used {other:.0f}% of a core meanwhile; again")
            self._quiet_left -= elapsed
        r.metrics["other_load_pct"] = max(r.metrics.get("other_load_pct", 0.0), other)
        if other > self.OTHER_MAX_PCT:
            r.notes.append(f"{key}: other processes used {other:.0f}% of a core meanwhile")

    def _rr(self, r: PathRun, ep: Endpoints, mode: str, kind: str, args: list[str]) -> None:
        key = {"latency": "rr", "connect": "conn", "connect-first": "conn1"}[kind]
        self.log(f"    {kind} ({'1 CPU' if mode == 'pin' else 'default'})")
        res = self._client(ep.rr, kind, args, 120, pin=mode == "pin")
        try:
            data = res.json()
        except ValueError as exc:
            r.errors.append(f"{key}_{mode}: {exc}")
            return
        r.details[f"{key}_{mode}"] = data
        if data.get("count"):
            r.metrics[f"{key}_{mode}_p50"] = data["p50_us"]
            r.metrics[f"{key}_{mode}_p99"] = data["p99_us"]
        else:
            r.errors.append(f"{key}_{mode}: no samples")

    def _throughput(self, r: PathRun, ep: Endpoints, streams: int, tunnel: dict[str, int]) -> None:
        key = f"tput{streams}"
        self.log(f"    throughput, {streams} stream{'s' if streams > 1 else ''}")
        target = ep.throughput
        server = self.servers.iperf if isinstance(target, TcpTarget) else self.servers.rr
        before = {label: procfs.cpu_seconds([pid]) for label, pid in tunnel.items()}
        server_before = procfs.cpu_seconds([server])
        blast_args = ["--seconds", str(self.s.iperf_seconds), "--streams", str(streams)]
        limit = float(self.s.iperf_seconds)
        if isinstance(target, PyClient) and self.s.blast_min_bytes > 0:
            limit = max(limit, self.s.blast_max_seconds)
            blast_args += [
                "--min-bytes",
                str(self.s.blast_min_bytes),
                "--max-seconds",
                str(self.s.blast_max_seconds),
            ]
        res = self._client(target, "blast", blast_args, limit + 30)
        tunnel_cpu = {
            label: procfs.cpu_seconds([pid]) - before[label] for label, pid in tunnel.items()
        }
        server_cpu = procfs.cpu_seconds([server]) - server_before
        try:
            data = res.json()
        except ValueError as exc:
            r.errors.append(f"{key}: {exc}")
            return
        if isinstance(target, TcpTarget):
            if "error" in data:
                r.errors.append(f"{key}: iperf3: {data['error']}")
                return
            received = data["end"]["sum_received"]
            nbytes, bps = received["bytes"], received["bits_per_second"]
            retr = data["end"]["sum_sent"].get("retransmits", 0)
            seconds = received.get("seconds", self.s.iperf_seconds)
        else:
            if data.get("errors") or not data.get("bytes"):
                r.errors.append(f"{key}: blast: {data.get('errors') or 'nothing arrived'}")
                return
            nbytes, bps, seconds = data["bytes"], data["bits_per_second"], data["seconds"]
            retr = None  # a Python sender cannot see TCP retransmits through a library path
        gb = nbytes / 1e9
        tunnel_total = sum(tunnel_cpu.values())
        r.metrics[f"{key}_gbps"] = bps / 1e9
        if retr is not None:
            r.metrics[f"{key}_retr"] = float(retr)
        r.metrics[f"{key}_cpu_s_per_gb"] = (res.cpu_s + server_cpu + tunnel_total) / gb
        if tunnel:
            r.metrics[f"{key}_tunnel_s_per_gb"] = tunnel_total / gb
            r.metrics[f"{key}_tunnel_pct"] = 100 * tunnel_total / max(seconds, 1e-9)
        r.details[key] = {
            "gbps": bps / 1e9,
            "bytes": nbytes,
            "retransmits": retr,
            "seconds": seconds,
            "client_cpu_s": res.cpu_s,
            "server_cpu_s": server_cpu,
            "tunnel_cpu_s": tunnel_cpu,
        }

    # -- helpers ---------------------------------------------------------------------------

    def _client(
        self,
        target: TcpTarget | PyClient,
        mode: str,
        args: list[str],
        timeout: float,
        pin: bool = False,
    ) -> ClientResult:
        if isinstance(target, TcpTarget):
            check_target(target.host)
            if mode == "blast":
                streams = args[args.index("--streams") + 1]
                cmd = [
                    "iperf3",
                    "-c",
                    target.host,
                    "-p",
                    str(target.port),
                    "-J",
                    "-t",
                    str(self.s.iperf_seconds),
                    "-P",
                    streams,
                    "--connect-timeout",
                    "5000",
                ]
            else:
                cmd = [
                    self.s.python,
                    "-m",
                    "bench.rr",
                    mode,
                    "--host",
                    target.host,
                    "--port",
                    str(target.port),
                    *args,
                ]
        else:
            cmd = [self.s.python, "-m", target.module, mode, *target.args, *args]
        pin_cmd = ["taskset", "-c", "0"] if pin else []
        bounded = ["timeout", "-k", "5", str(int(timeout)), *pin_cmd, *cmd]
        return run_client(["ip", "netns", "exec", target.ns, *bounded], timeout, self.s.env)

    def _wait_quiet(self, r: PathRun, what: str) -> None:
        """Wait (bounded) until the machine is idle, so other jobs disturb us less."""
        limit = min(self.s.quiet_max_wait, self._quiet_left)
        if limit <= 0:
            return
        t0 = time.monotonic()
        busy = _busy_cores(0.3)
        while busy > 0.25 and time.monotonic() - t0 < limit:
            busy = _busy_cores(0.5)
        waited = time.monotonic() - t0
        self._quiet_left -= max(0.0, waited - 0.3)
        if waited > 2:
            self.log(f"    waited {waited:.0f} s for other load to stop")
        if busy > 0.25:
            r.notes.append(f"{what}: machine busy ({busy * 100:.0f}% of a core) at start")


def _busy_cores(interval: float) -> float:
    """Cores' worth of non-idle CPU over `interval` seconds, from /proc/stat."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values[:8]) - idle, sum(values[:8])

    b0, t0 = sample()
    time.sleep(interval)
    b1, t1 = sample()
    ncpu = os.cpu_count() or 1
    return ncpu * (b1 - b0) / max(1, t1 - t0)
