"""The test bed: two network namespaces joined by a veth pair, and the processes started in them.

Namespace and interface names carry a random suffix so several invocations (or a leftover from a
killed one) never collide. The namespaces get no default route and no link to the host, so test
traffic cannot leave them. Every process the harness starts is registered in one `Procs` table
and killed by PID at the end; `Topology.destroy()` then kills whatever still lives inside the two
namespaces (only the harness put anything there) and deletes them. `destroy()` is idempotent and
also registered with `atexit`, so Ctrl-C or an exception still cleans up.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ADDR_A",
    "ADDR_B",
    "Netns",
    "Procs",
    "Topology",
    "sh",
]

ADDR_A = "198.18.0.1"
ADDR_B = "198.18.0.2"
PREFIX = 24
# Daemons are wrapped in `timeout` so that even a SIGKILLed harness leaves nothing running forever.
DAEMON_MAX_SECONDS = 3 * 3600


def sh(argv: Sequence[str], timeout: float = 60.0, check: bool = True, merge: bool = False) -> str:
    """Run a short command to completion and return its stdout (plus stderr if `merge`)."""
    proc = subprocess.run(
        list(argv),
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        err = (proc.stdout if merge else proc.stderr).strip()[-500:]
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err}")
    return proc.stdout


class Procs:
    """Every long-running process the harness started, so cleanup kills exactly those."""

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
        """Start `argv` detached (own session, stdin closed, output to `log`); return its PID."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(env) if env is not None else None,
            )
        self._procs[proc.pid] = proc
        return proc.pid

    def alive(self, pid: int) -> bool:
        proc = self._procs.get(pid)
        return proc is not None and proc.poll() is None

    def stop(self, *pids: int, grace: float = 3.0) -> None:
        """SIGTERM the given PIDs we started, SIGKILL after `grace` seconds, and reap them."""
        procs = [self._procs.pop(p) for p in pids if p in self._procs]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)

    def stop_all(self) -> None:
        self.stop(*list(self._procs))


@dataclass
class Netns:
    """One namespace of the pair: its name, veth address, and how to run things inside it."""

    name: str
    addr: str
    suffix: str
    procs: Procs = field(repr=False)

    def ifname(self, stem: str) -> str:
        """A per-invocation interface name (Linux allows 15 characters)."""
        name = f"{stem}{self.suffix}"
        if len(name) > 15:
            raise ValueError(f"interface name {name!r} is too long")
        return name

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], timeout: float = 60.0, check: bool = True, merge: bool = False
    ) -> str:
        """Run a short command inside the namespace (bounded by `timeout`); return its output."""
        wrapped = self.argv(["timeout", "-k", "5", str(int(timeout)), *argv])
        return sh(wrapped, timeout + 10, check, merge)

    def spawn(self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
        """Start a daemon inside the namespace (bounded by `timeout`); return the PID to track.

        The PID is that of the `timeout` wrapper; CPU accounting and pinning follow its process
        tree, so the daemon and everything it forks are included.
        """
        wrapped = ["timeout", "-k", "5", str(DAEMON_MAX_SECONDS), *argv]
        return self.procs.start(self.argv(wrapped), log, env)

    def wait_listen(self, port: int, timeout: float = 10.0) -> None:
        """Wait until something in the namespace listens on TCP `port`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = sh(self.argv(["ss", "-Hltn", f"sport = :{port}"]), check=False)
            if out.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on {self.name}:{port} after {timeout:.0f} s")

    def inode(self) -> int:
        """Identity of the namespace, as /proc/<pid>/ns/net of its processes shows it."""
        return os.stat(f"/run/netns/{self.name}").st_ino

    def pids(self) -> list[int]:
        out = sh(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in out.split()]


class Topology:
    """Namespaces A (clients) and B (servers) joined by one veth pair, 198.18.0.1 <-> .2 /24."""

    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        self.procs = Procs()
        self.a = Netns(f"ubA-{self.suffix}", ADDR_A, self.suffix, self.procs)
        self.b = Netns(f"ubB-{self.suffix}", ADDR_B, self.suffix, self.procs)
        self._created: list[str] = []
        atexit.register(self.destroy)

    def create(self) -> None:
        va, vb = self.a.ifname("ubva"), self.b.ifname("ubvb")
        for ns in (self.a, self.b):
            sh(["ip", "netns", "add", ns.name])
            self._created.append(ns.name)
        sh(["ip", "link", "add", va, "type", "veth", "peer", "name", vb])
        sh(["ip", "link", "set", va, "netns", self.a.name])
        sh(["ip", "link", "set", vb, "netns", self.b.name])
        for ns, dev in ((self.a, va), (self.b, vb)):
            sh(["ip", "-n", ns.name, "addr", "add", f"{ns.addr}/{PREFIX}", "dev", dev])
            sh(["ip", "-n", ns.name, "link", "set", "lo", "up"])
            sh(["ip", "-n", ns.name, "link", "set", dev, "up"])

    def kill_leftovers(self, keep: Sequence[int] = ()) -> None:
        """Kill processes inside our namespaces other than `keep` (all of them were ours)."""
        for ns in (self.a, self.b):
            if ns.name not in self._created:
                continue
            for pid in ns.pids():
                if pid not in keep and pid != os.getpid():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        """Kill our processes and delete the namespaces. Safe to call twice."""
        self.procs.stop_all()
        self.kill_leftovers()
        for name in self._created:
            sh(["ip", "netns", "del", name], check=False)
        self._created.clear()
