"""Umbranet's own data plane as a benchmark path: SDK (A) -> router (B) -> SDK (B).

`setup` builds a throwaway network in `tmpdir` with the real processes a user would run:

1. `umbra --home H controller init --address 198.18.0.2:8443` (files only), then
   `umbra controller run` in namespace B;
2. `bench.paths.umbranet_setup provision` in B: the router identity, services `bench-echo`
   and `bench-sink` (dial #bench-clients, host #bench-hosts) and two workload identities,
   all enrolled with one-time tokens;
3. `umbra router run --listen 198.18.0.2:7443` in B (the only data-plane port), and a wait
   until it registered with the controller;
4. `bench.paths.umbranet_host` in B: an SDK process that hosts both services and speaks
   `bench.rr`'s echo/sink protocols on the streams itself (no TCP hop on the host side);
5. the clients in A are `bench.paths.umbranet_client` (`PyClient`): the blocking SDK facade
   driven by `bench.rr.client_main`, dialing through the veth to the router.

CPU of the path = router + host SDK process + controller (the controller is idle during data
transfer: tickets are cached by the SDK and checked offline by the router).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.netns import Netns
from bench.paths import Endpoints, PyClient
from bench.paths._base import DaemonPath

__all__ = ["CONTROLLER_PORT", "ROUTER_PORT", "SETUP_WRITTEN", "Umbranet", "UmbranetAsync"]

SETUP_WRITTEN = True

CONTROLLER_PORT = 8443
ROUTER_PORT = 7443
REPO = Path(__file__).resolve().parents[2]
READY_WAIT = 60.0


@dataclass(frozen=True, slots=True)
class Core:
    """What `Umbranet.start_core` started: identity files, daemon PIDs and addresses."""

    files: Path
    controller: int
    router: int
    controller_addr: str
    router_addr: str


class Umbranet(DaemonPath):
    name = "umbranet"
    title = (
        "Umbranet: SDK -> router -> SDK (mTLS links, end-to-end AEAD); "
        "client through the blocking facade (umbranet.sdk.blocking)"
    )
    client_module = "bench.paths.umbranet_client"
    client_note = "dialer in A uses umbranet.sdk.blocking (a loop thread; 2 hand-offs per call)"

    def unavailable(self) -> str | None:
        try:
            sdk = importlib.import_module("umbranet.sdk")
        except ImportError as exc:
            return f"not available yet (cannot import umbranet.sdk: {exc})"
        if not hasattr(sdk, "Context"):
            return "not available yet (umbranet.sdk does not provide Context)"
        if not SETUP_WRITTEN:
            return "not available yet (bench/paths/umbranet.py setup() is not written)"
        return None

    def versions(self) -> dict[str, str]:
        try:
            pkg = importlib.import_module("umbranet")
        except ImportError:
            return {}
        version = str(getattr(pkg, "__version__", "source tree"))
        versions = {"umbranet": f"{version} ({_source_revision()})"}
        try:
            uvloop = importlib.import_module("uvloop")
            versions["uvloop"] = str(getattr(uvloop, "__version__", "?"))
        except ImportError:
            versions["uvloop"] = "not installed (stock asyncio loop)"
        return versions

    def start_core(
        self, ns_b: Netns, tmpdir: Path, env: dict[str, str], *, agent: bool = False
    ) -> Core:
        """Controller and router in B, identities provisioned (with the agents' if `agent`)."""
        home, files = tmpdir / "home", tmpdir / "ids"
        files.mkdir(mode=0o700)
        controller_addr = f"{ns_b.addr}:{CONTROLLER_PORT}"
        router_addr = f"{ns_b.addr}:{ROUTER_PORT}"
        # Only files are written here, so it runs in the harness's own namespace.
        _check_run([*_umbra(home), "controller", "init", "--address", controller_addr], env, "init")
        controller = self.spawn(
            ns_b, [*_umbra(home), "controller", "run"], tmpdir / "controller.log", env
        )
        setup = [sys.executable, "-m", "bench.paths.umbranet_setup"]
        provision = [*setup, "provision", *(["--agent"] if agent else [])]
        _ns_run(ns_b, [*provision, "--home", str(home), "--out", str(files)], env)
        router = self.spawn(
            ns_b,
            [
                sys.executable,
                "-m",
                "umbranet.cli.main",
                "router",
                "run",
                "--identity",
                str(files / "router.json"),
                "--listen",
                router_addr,
            ],
            tmpdir / "router.log",
            env,
        )
        _ns_run(ns_b, [*setup, "wait-router", "--home", str(home), "--address", router_addr], env)
        return Core(files, controller, router, controller_addr, router_addr)

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        t0 = time.monotonic()
        env = _env()
        core = self.start_core(ns_b, tmpdir, env)
        files, router, controller = core.files, core.router, core.controller
        router_addr, controller_addr = core.router_addr, core.controller_addr
        ready = tmpdir / "host.ready"
        host = self.spawn(
            ns_b,
            [
                sys.executable,
                "-m",
                "bench.paths.umbranet_host",
                "--identity",
                str(files / "host.json"),
                "--ready",
                str(ready),
            ],
            tmpdir / "host.log",
            env,
        )
        _wait_file(ready, READY_WAIT, ns_b, host, tmpdir / "host.log")
        client = PyClient(
            ns_a.name,
            self.client_module,
            ("--identity", str(files / "dialer.json")),
            first_dial=True,
        )
        return Endpoints(
            throughput=client,
            rr=client,
            cpu_pids={"router(B)": router, "host SDK(B)": host, "controller(B)": controller},
            notes=(
                f"router {router_addr}, controller {controller_addr} (both in B); "
                f"{self.client_note}; host in B is an SDK process (no TCP hop)",
                "link: mutual TLS (Python ssl on uvloop); streams: Noise XX + AES-256-GCM "
                "end to end; client and host SDK do the rr.py echo/sink protocol themselves",
                f"setup (controller init, enrollments, router, host bind): "
                f"{time.monotonic() - t0:.1f} s",
            ),
        )


class UmbranetAsync(Umbranet):
    """The same network, measured with the async SDK in the client (no facade thread)."""

    name = "umbranet-async"
    title = "Umbranet: SDK -> router -> SDK, client on the async SDK (asyncio/uvloop)"
    client_module = "bench.paths.umbranet_async_client"
    client_note = "dialer in A runs the tests as coroutines on the SDK's loop"


def _source_revision() -> str:
    """Which source was measured: the git commit (and whether src/ had local edits).

    A snapshot made with `git archive` has no .git; it carries the commit in .source-commit.
    """
    marker = REPO / ".source-commit"
    if marker.exists():
        return f"git {marker.read_text().strip()[:12]}, exported snapshot"
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "source tree, revision unknown"
    return f"git {head[:12]}" + (" + uncommitted changes in src/" if dirty else "")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        x for x in (str(REPO), str(REPO / "src"), env.get("PYTHONPATH", "")) if x
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _umbra(home: Path) -> list[str]:
    return [sys.executable, "-m", "umbranet.cli.main", "--home", str(home)]


def _check_run(argv: list[str], env: dict[str, str], what: str) -> str:
    proc = subprocess.run(
        argv,
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"umbranet {what} failed: {(proc.stderr or proc.stdout)[-400:]}")
    return proc.stdout


def _ns_run(ns: Netns, argv: list[str], env: dict[str, str]) -> dict[str, object]:
    bounded = ns.argv(["timeout", "-k", "5", "120", *argv])
    out = _check_run(bounded, env, argv[3])
    value = json.loads(out.strip().splitlines()[-1])
    if not isinstance(value, dict) or not value.get("ok"):
        raise RuntimeError(f"umbranet setup step said {value!r}")
    return value


def _wait_file(path: Path, wait: float, ns: Netns, pid: int, log: Path) -> None:
    deadline = time.monotonic() + wait
    while not path.exists():
        if not ns.procs.alive(pid):
            tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
            raise RuntimeError(f"umbranet host exited during setup: {tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"umbranet host did not bind in {wait:.0f} s")
        time.sleep(0.1)
