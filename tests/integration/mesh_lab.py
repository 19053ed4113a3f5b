"""A router mesh in network namespaces, for the issue 11 process tests: five routers in a
ring plus a chord, each in its own namespace, and endpoints attached to chosen routers.

    C: controller 198.18.94.254:8443 on a bridge every other namespace joins (control only)

        r1 ─── r2
       / │      │        router ri listens on 198.18.95.i:7443 (on its loopback), reached
     r5  │ (chord)        only over the veth links drawn here: a /32 route per neighbour,
       \\ │      │        no forwarding, so routers link only where a wire exists
        r4 ─── r3        (the controller's graph has exactly these six links)

An endpoint namespace joins the control bridge (enrollment, tickets) and has a veth link to
each router it is attached to, so it can reach those routers and no other. Routers and
endpoints are real `umbra router run` and `mesh_peer.py` processes; each router serves its
metrics on its own namespace's loopback, which `path` reads to see which routers carry a
stream's circuit. Everything is deleted by `destroy` (see `netns_helper.Lab`).
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tests.integration.netns_helper import Lab, sh

__all__ = ["CHORD_RING", "MeshLab", "Peer"]

PEER = str(Path(__file__).with_name("mesh_peer.py"))
UMBRA = [sys.executable, "-m", "umbranet.cli.main"]
CONTROL_HOST = "198.18.94.254"
CONTROLLER = f"{CONTROL_HOST}:8443"
ROUTER_PORT = 7443
METRICS = "127.0.0.1:9464"  # in each router's own namespace
WAIT = 60.0

# r1..r5 in a ring, and the chord r1-r3.
CHORD_RING = (("r1", "r2"), ("r2", "r3"), ("r3", "r4"), ("r4", "r5"), ("r5", "r1"), ("r1", "r3"))


class Peer:
    """A `mesh_peer.py` process: its JSON lines, read by a thread, waited for with bounds."""

    def __init__(self, child: subprocess.Popen[bytes], name: str) -> None:
        self.child = child
        self.name = name
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.child.stdout is not None
        for raw in self.child.stdout:
            try:
                self.lines.put(json.loads(raw))
            except ValueError:
                continue  # not ours (a library printing): the log has stderr

    def go(self) -> None:
        """Let the process past the gate it waits at (a line on its stdin)."""
        assert self.child.stdin is not None
        self.child.stdin.write(b"go\n")
        self.child.stdin.flush()

    def expect(self, event: str, timeout: float = WAIT) -> dict[str, Any]:
        """The next line of `event` (earlier lines of other events are kept in `seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.05, min(left, 1.0)))
            except queue.Empty:
                if self.child.poll() is not None and self.lines.empty():
                    raise AssertionError(
                        f"{self.name} exited ({self.child.returncode}) before {event!r}; "
                        f"saw {self.seen}"
                    ) from None
                assert left > 0, f"{self.name}: no {event!r} in {timeout:g}s; saw {self.seen}"
                continue
            self.seen.append(line)
            if line["event"] == event:
                return line


class MeshLab:
    """Namespaces, the controller, the routers and the endpoints of one test."""

    def __init__(self, root: Path, links: Sequence[tuple[str, str]] = CHORD_RING) -> None:
        self.root = root
        (root / "logs").mkdir(exist_ok=True)
        self.lab = Lab(root / "logs")
        self.home = str(root / "home")
        self.links = links
        self.names = sorted({name for pair in links for name in pair})
        self.ns: dict[str, str] = {}
        self.routers: dict[str, subprocess.Popen[bytes]] = {}
        self._wire_of: dict[frozenset[str], tuple[int, str]] = {}  # pair -> (number, .1 end)
        self._bridged = 0

    # -- building -----------------------------------------------------------------------

    def build(self, endpoints: dict[str, Sequence[str]]) -> None:
        """Namespaces and wires: the routers' ring and each endpoint's routers."""
        lab = self.lab
        self.core = lab.namespace("C")
        lab.bridge(self.core, "br0", f"{CONTROL_HOST}/24")
        for name in self.names:
            ns = self.ns[name] = self._joined(name)
            sh(["ip", "-n", ns, "addr", "add", f"{self.address(name, port=False)}/32", "dev", "lo"])
        for a, b in self.links:
            self._wire(a, b)
            self._wire(b, a)
        for endpoint, routers in endpoints.items():
            self.ns[endpoint] = self._joined(endpoint)
            for router in routers:
                self._wire(endpoint, router)

    def _joined(self, stem: str) -> str:
        ns = self.lab.namespace(stem)
        self._bridged += 1
        self.lab.join(self.core, "br0", ns, f"198.18.94.{self._bridged}/24")
        return ns

    def _wire(self, a: str, b: str) -> None:
        """A veth between a and b (once per pair) and a's route to b's listener over it;
        b needs no route back: a's end of the wire is on b's connected subnet."""
        pair = frozenset((a, b))
        if pair not in self._wire_of:
            number = len(self._wire_of) + 1
            self._wire_of[pair] = (number, a)
            self.lab.link(self.ns[a], f"198.19.{number}.1/24", self.ns[b],
                          f"198.19.{number}.2/24")  # fmt: skip
        number, first = self._wire_of[pair]
        via = f"198.19.{number}.{2 if first == a else 1}"
        target = f"{self.address(b, port=False)}/32"
        sh(["ip", "-n", self.ns[a], "route", "add", target, "via", via])

    def address(self, router: str, port: bool = True) -> str:
        """Router `router`'s listener (where endpoints and neighbour routers connect)."""
        host = f"198.18.95.{self.names.index(router) + 1}"
        return f"{host}:{ROUTER_PORT}" if port else host

    def start(
        self,
        services: Iterable[tuple[str, list[str], list[str]]],
        identities: Iterable[tuple[str, list[str]]],
    ) -> None:
        """The controller, every router (enrolled), the services and identities; returns
        once the controller has confirmed every link of the ring."""
        done = self.lab.umbra(
            self.core, "--home", self.home, "controller", "init", "--address", CONTROLLER
        )
        assert done.returncode == 0, done.stderr
        self.lab.spawn(self.core, "controller", [*UMBRA, "--home", self.home, "controller", "run"])
        spec = self.root / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "out": str(self.root),
                    "routers": self.names,
                    "services": list(services),
                    "identities": list(identities),
                }
            )
        )
        self.admin("admin", str(spec)).expect("ready")
        for name in self.names:
            self.start_router(name)
        self.admin("edges", str(len(self.links))).expect("edges")

    def start_router(self, name: str) -> None:
        argv = [*UMBRA, "router", "run", "-i", str(self.root / f"{name}.json"),
                "--listen", self.address(name), "--metrics-listen", METRICS, "-v"]  # fmt: skip
        self.routers[name] = self.lab.spawn(self.ns[name], name, argv)

    # -- running ------------------------------------------------------------------------

    def peer(self, ns_of: str, name: str, *args: str) -> Peer:
        """`mesh_peer.py ARGS` in the namespace of `ns_of`; stderr goes to logs/NAME.log."""
        with open(self.root / "logs" / f"{name}.log", "ab") as log:
            argv = self.lab.argv(self.ns.get(ns_of, ns_of), [sys.executable, PEER, *args])
            child = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.PIPE,
            )
        self.lab.children[child.pid] = child
        return Peer(child, name)

    def admin(self, *args: str) -> Peer:
        """An admin call in the controller's namespace (`mesh_peer.py MODE HOME ...`)."""
        mode, *rest = args
        return self.peer(self.core, f"admin-{mode}", mode, self.home, *rest)

    def endpoint(self, name: str, mode: str, identity: str, *args: str) -> Peer:
        return self.peer(name, f"{name}-{mode}", mode, str(self.root / f"{identity}.json"), *args)

    def kill(self, router: str) -> None:
        """SIGKILL one router process (ours, by PID) and wait for it."""
        child = self.routers.pop(router)
        self.lab.stop(child, signal.SIGKILL)
        assert child.returncode == -signal.SIGKILL

    def circuits(self, router: str) -> float:
        """The router's `umbra_router_circuits` gauge (0 when it does not answer)."""
        curl = ["curl", "-s", "--max-time", "3", f"http://{METRICS}/metrics"]
        text = self.lab.run(self.ns[router], curl, check=False)
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == "umbra_router_circuits":
                return float(value)
        return 0.0

    def path(self, start: str) -> list[str]:
        """The live routers that hold circuits, in path order from `start` (the dialer's
        router): what carries a lone stream right now."""
        busy = {name for name in self.routers if self.circuits(name) > 0}
        order, here = [start], start
        while True:
            step = [
                b if a == here else a
                for a, b in self.links
                if here in (a, b) and (b if a == here else a) in busy - set(order)
            ]
            if not step:
                return order
            here = step[0]
            order.append(here)

    def log_size(self, name: str) -> int:
        return (self.root / "logs" / f"{name}.log").stat().st_size

    def setup_times(self, router: str, since: int) -> list[float]:
        """Path setup times (ms) the router logged after byte `since` of its log: from a
        change (a neighbour link lost) to the controller's new routes installed."""
        with open(self.root / "logs" / f"{router}.log", "rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        found = re.findall(r"mesh: \d+ routes installed ([0-9.]+) ms after the change", text)
        return [float(ms) for ms in found]

    def destroy(self) -> None:
        self.lab.destroy()
