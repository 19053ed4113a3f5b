"""Network namespaces for root-mode tests: created with random names, always deleted.

Only addresses in 198.18.0.0/15 are ever assigned. Every process a test starts is recorded
and killed by PID; `Lab.destroy` then kills what still runs inside the lab's namespaces
(only the lab put anything there), deletes them and the ``/etc/netns/<name>`` directories
it created. Nothing in the root namespace is touched besides creating veth pairs that move
straight into the lab's namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Lab", "sh"]


def sh(argv: Sequence[str], check: bool = True, timeout: float = 60.0) -> str:
    """Run a short command; its stdout (RuntimeError with stderr if it fails and `check`)."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-800:]}")
    return proc.stdout


class Lab:
    """Namespaces joined by veth pairs, and the processes run inside them."""

    def __init__(self, logs: Path) -> None:
        self.suffix = secrets.token_hex(3)
        self.logs = logs
        self.namespaces: list[str] = []
        self.netns_dirs: list[Path] = []
        self.created_parent = False
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self._veths = 0  # numbers veth names: unique within the lab

    def namespace(self, stem: str) -> str:
        name = f"urm{stem}-{self.suffix}"
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        sh(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def link(self, left: str, left_cidr: str, right: str, right_cidr: str) -> None:
        """A veth pair between two of our namespaces, with one 198.18/15 address each end."""
        for cidr in (left_cidr, right_cidr):
            assert cidr.startswith(("198.18.", "198.19.")), cidr
        a, b = self._veth_pair(left, right)
        for ns, dev, cidr in ((left, a, left_cidr), (right, b, right_cidr)):
            sh(["ip", "-n", ns, "addr", "add", cidr, "dev", dev])
            sh(["ip", "-n", ns, "link", "set", dev, "up"])

    def bridge(self, ns: str, name: str, cidr: str) -> None:
        """A bridge in `ns` with one 198.18/15 address: a shared segment for `join`."""
        assert cidr.startswith(("198.18.", "198.19.")), cidr
        sh(["ip", "-n", ns, "link", "add", name, "type", "bridge"])
        sh(["ip", "-n", ns, "addr", "add", cidr, "dev", name])
        sh(["ip", "-n", ns, "link", "set", name, "up"])

    def join(self, bridge_ns: str, bridge: str, ns: str, cidr: str) -> None:
        """Plug `ns` into `bridge` (made by `bridge`) with one 198.18/15 address."""
        assert cidr.startswith(("198.18.", "198.19.")), cidr
        inner, outer = self._veth_pair(ns, bridge_ns)
        sh(["ip", "-n", ns, "addr", "add", cidr, "dev", inner])
        sh(["ip", "-n", ns, "link", "set", inner, "up"])
        sh(["ip", "-n", bridge_ns, "link", "set", outer, "master", bridge])
        sh(["ip", "-n", bridge_ns, "link", "set", outer, "up"])

    def _veth_pair(self, left: str, right: str) -> tuple[str, str]:
        # Numbered, not random: a lab with a dozen links must never draw the same name twice.
        self._veths += 1
        a, b = f"uv{self.suffix}{self._veths}a"[:15], f"uv{self.suffix}{self._veths}b"[:15]
        sh(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
        sh(["ip", "link", "set", a, "netns", left])
        sh(["ip", "link", "set", b, "netns", right])
        return a, b

    def resolv_conf(self, ns: str, text: str) -> Path:
        """The file ``ip netns exec`` bind-mounts over /etc/resolv.conf in `ns`."""
        parent = Path("/etc/netns")
        if not parent.exists():
            parent.mkdir(mode=0o755)
            self.created_parent = True
        directory = parent / ns
        directory.mkdir(exist_ok=False)
        self.netns_dirs.append(directory)
        path = directory / "resolv.conf"
        path.write_text(text)
        return path

    def argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, argv: Sequence[str], check: bool = True, timeout: float = 60) -> str:
        return sh(self.argv(ns, argv), check, timeout)

    def block_udp(self, ns: str, other: str) -> None:
        """`ns` drops every UDP datagram to and from the IPv4 address `other` (a direct
        path killed), in an nftables table of its own; `unblock_udp` deletes it."""
        rules = (
            "add table inet umbratest\n"
            "add chain inet umbratest out { type filter hook output priority 0; }\n"
            "add chain inet umbratest in { type filter hook input priority 0; }\n"
            f"add rule inet umbratest out ip daddr {other} meta l4proto udp drop\n"
            f"add rule inet umbratest in ip saddr {other} meta l4proto udp drop\n"
        )
        subprocess.run(self.argv(ns, ["nft", "-f", "-"]), input=rules.encode(), check=True,
                       timeout=30)  # fmt: skip

    def unblock_udp(self, ns: str) -> None:
        self.run(ns, ["nft", "delete", "table", "inet", "umbratest"], timeout=30)

    def iperf3(self, ns: str, argv: Sequence[str], attempts: int = 20) -> dict[str, Any]:
        """`end.sum_received` of an iperf3 client run (`argv` with -J) in `ns`.

        A run is tried again when it fails or is cut short: a server that is not listening
        yet, or a run that exits 0 with an "error" and no totals in its JSON. So each
        server this is used against must keep serving (no ``-1``)."""
        done = None
        for _ in range(attempts):
            done = subprocess.run(
                self.argv(ns, argv), capture_output=True, text=True, timeout=60, check=False
            )
            if done.returncode == 0:
                received = json.loads(done.stdout).get("end", {}).get("sum_received")
                if received is not None and received.get("bytes", 0) > 0:
                    return dict(received)
            time.sleep(0.2)
        assert done is not None
        raise AssertionError(f"iperf3 failed: {done.stdout[-500:]!r} {done.stderr[-500:]!r}")

    def umbra(self, ns: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(ns, [sys.executable, "-m", "umbranet.cli.main", *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(self, ns: str, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """A long-running process in `ns` (``ip netns exec`` execs, so the PID is its own)."""
        with open(self.logs / f"{name}.log", "ab") as log:
            child = subprocess.Popen(
                self.argv(ns, argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        self.children[child.pid] = child
        return child

    def stop(self, child: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
        self.children.pop(child.pid, None)

    def destroy(self) -> None:
        """Kill our processes, delete our namespaces and /etc/netns entries (idempotent)."""
        for child in list(self.children.values()):
            self.stop(child)
        for ns in self.namespaces:
            for pid in sh(["ip", "netns", "pids", ns], check=False).split():
                if int(pid) != os.getpid():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        for ns in self.namespaces:
            sh(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
        for directory in self.netns_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self.netns_dirs.clear()
        if self.created_parent:
            with contextlib.suppress(OSError):
                Path("/etc/netns").rmdir()  # only if still empty
