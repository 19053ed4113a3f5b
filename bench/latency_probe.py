"""Latency probe: dial + first round trip and 64-byte round trips on 127.0.0.1, real processes.

Why: the side-by-side harness (`python -m bench`) needs root, builds namespaces and takes
minutes; tuning the data path needs a number in seconds, measured the same way. This script
starts the same processes the harness does (controller, router, an SDK host serving
`bench-echo`, the async SDK client of `bench.paths.umbranet_async_client`), all on loopback,
and prints medians of several client runs:

- `connect`: dial a new end-to-end stream + one 64 B round trip + half-close (>= 200 each);
- `latency`: 64 B round trips on one stream (>= 2000 each), p50 and p99.

`--client blocking` drives the same tests through `umbranet.sdk.blocking` (the harness's
`umbranet` row). `--pin` runs every process on CPU 0 (the harness's '1 CPU' mode: the software
cost, stable for ratios); without it the scheduler places them. `--profile client` runs the
client under cProfile (a .prof file per run in the work directory); `--hold` keeps the network
up after measuring and prints the PIDs, for `py-spy record -p PID` while a client runs by hand.

    .venv/bin/python -m bench.latency_probe --pin --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.latency_probe")
    parser.add_argument("--runs", type=int, default=3, help="client runs per measurement")
    parser.add_argument("--connects", type=int, default=200)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--pin", action="store_true", help="all processes on CPU 0")
    parser.add_argument("--profile", choices=["none", "client"], default="none")
    parser.add_argument("--modes", default="connect,latency")
    parser.add_argument(
        "--client", choices=["async", "blocking"], default="async", help="SDK client to drive"
    )
    parser.add_argument("--hold", action="store_true", help="keep the network up at the end")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="umbra-probe-"))
    net = _Network(work, pin=args.pin)
    try:
        net.start()
        results: dict[str, list[dict[str, Any]]] = {}
        for run in range(args.runs):
            for mode in args.modes.split(","):
                count = args.connects if mode == "connect" else args.round_trips
                result = net.client(mode, count, args.profile, run, args.client)
                results.setdefault(mode, []).append(result)
        _report(results, args.pin)
        if args.hold:
            print(json.dumps({"pids": net.pids, "dialer": str(work / "ids" / "dialer.json")}))
            print("holding; Ctrl-C to stop", flush=True)
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        net.stop()
        if not args.keep and args.profile == "none":
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory: {work}")
    return 0


class _Network:
    """Controller, router and host as child processes, stopped by PID."""

    def __init__(self, work: Path, pin: bool) -> None:
        self.work = work
        self.pin = pin
        self.pids: dict[str, int] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src")])
        self.env["PYTHONUNBUFFERED"] = "1"

    def start(self) -> None:
        home, ids = self.work / "home", self.work / "ids"
        ids.mkdir(mode=0o700)
        ctl_addr = f"127.0.0.1:{_free_port()}"
        router_addr = f"127.0.0.1:{_free_port()}"
        umbra = [PY, "-m", "umbranet.cli.main", "--home", str(home)]
        self._run([*umbra, "controller", "init", "--address", ctl_addr])
        self._spawn("controller", [*umbra, "controller", "run"])
        setup = [PY, "-m", "bench.paths.umbranet_setup"]
        self._run([*setup, "provision", "--home", str(home), "--out", str(ids)])
        router = [PY, "-m", "umbranet.cli.main", "router", "run"]
        router += ["--identity", str(ids / "router.json"), "--listen", router_addr]
        self._spawn("router", router)
        self._run([*setup, "wait-router", "--home", str(home), "--address", router_addr])
        ready = self.work / "host.ready"
        host = [PY, "-m", "bench.paths.umbranet_host", "--identity", str(ids / "host.json")]
        self._spawn("host", [*host, "--ready", str(ready)])
        deadline = time.monotonic() + 60
        while not ready.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the host did not bind within 60 s")
            time.sleep(0.1)

    def client(
        self, mode: str, count: int, profile: str, run: int, kind: str = "async"
    ) -> dict[str, Any]:
        argv = [PY]
        if profile == "client":
            argv += ["-m", "cProfile", "-o", str(self.work / f"client-{mode}-{run}.prof")]
        module = "umbranet_async_client" if kind == "async" else "umbranet_client"
        argv += ["-m", f"bench.paths.{module}", mode, "--count", str(count)]
        argv += ["--identity", str(self.work / "ids" / "dialer.json")]
        out = self._run(argv, timeout=600)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def _prefix(self) -> list[str]:
        return ["taskset", "-c", "0"] if self.pin else []

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.work / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [*self._prefix(), *argv],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._procs.append(proc)
        self.pids[name] = proc.pid

    def _run(self, argv: list[str], timeout: float = 120) -> str:
        proc = subprocess.run(
            [*self._prefix(), *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[2:4]} failed: {(proc.stderr or proc.stdout)[-600:]}")
        return proc.stdout


def _report(results: dict[str, list[dict[str, Any]]], pin: bool) -> None:
    label = "pinned" if pin else "default"
    for mode, runs in results.items():
        p50s = [r["p50_us"] for r in runs]
        p99s = [r["p99_us"] for r in runs]
        name = "dial+1RT" if mode == "connect" else "RR 64B"
        print(
            f"{name:9s} {label:7s} p50 median {statistics.median(p50s):8.1f} us "
            f"(runs {', '.join(f'{x:.0f}' for x in p50s)}) "
            f"p99 median {statistics.median(p99s):8.1f} us  n={runs[0]['count']}",
            flush=True,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


if __name__ == "__main__":
    raise SystemExit(main())
