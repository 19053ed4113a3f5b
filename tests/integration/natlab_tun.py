"""`umbra up --tun` in the NAT lab: controller and two routers (STUN) on the wan, devices
behind the lab's NATs; used by tests/integration/test_natlab_tun.py and bench/nat_traversal.py.

Policy (attribute rule): A hosts services B and C may dial; B, C and D each host one A may
dial; so A-B, A-C and A-D are peers, no other pair is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import wait_for
from tests.integration.natlab import NatLab, Site
from tests.integration.netns_helper import Lab, sh
from umbranet.agent import LocalApiClient

__all__ = ["CONTROLLER", "World"]

CONTROLLER = "198.18.0.10:8443"
TURN = "198.18.0.3:3478"
TURN_SECRET = "natlab-turn-shared-secret"
SERVICES = (
    ("on-a", "a", "b"),
    ("on-a2", "a", "c"),
    ("on-b", "b", "a"),
    ("on-c", "c", "a"),
    ("on-d", "d", "a"),
)


@contextmanager
def started_world(
    tmp_path: Path,
    kinds: dict[str, str],
    *,
    before_up: Callable[[World], None] | None = None,
    agent_options: tuple[str, ...] = (),
    turn: bool = False,
    turn_tcp: bool = False,
) -> Iterator[World]:
    """The lab of `kinds`, every device up (`before_up` runs first: e.g. a NAT rule), torn
    down afterwards. The caller puts the repo's ``src`` on PYTHONPATH for the processes."""
    logs = tmp_path / "logs"
    logs.mkdir()
    lab = Lab(logs)
    try:
        world = World.build(lab, tmp_path, kinds, turn=turn, turn_tcp=turn_tcp)
        if before_up is not None:
            before_up(world)
        for device in world.sites:
            world.up(device, *agent_options)
        yield world
    finally:
        lab.destroy()


class World:
    def __init__(self, lab: Lab, natlab: NatLab, root: Path) -> None:
        self.lab, self.natlab, self.root = lab, natlab, root
        self.sites: dict[str, Site] = {}

    def umbra_ok(self, ns: str, *args: str) -> str:
        done = self.lab.umbra(ns, *args)
        assert done.returncode == 0, f"umbra {' '.join(args)}: {done.stderr}{done.stdout}"
        return done.stdout

    def status(self, device: str) -> dict[str, Any]:
        data: dict[str, Any] = LocalApiClient(self.root / f"agent-{device}" / "agent.sock").get(
            "/v1/status"
        )
        return data

    def peer(self, device: str, name: str) -> dict[str, Any] | None:
        for p in self.status(device)["tun"]["peers"]:
            if p["name"] == name:
                return dict(p)
        return None

    @classmethod
    def build(
        cls,
        lab: Lab,
        root: Path,
        kinds: dict[str, str],
        *,
        turn: bool = False,
        turn_tcp: bool = False,
    ) -> World:
        """Controller, routers r1/r2 (STUN at the lab's addresses), identities and services;
        with `turn`, a coturn at `TURN` configured at the controller (with `turn_tcp`, one
        that listens on TCP only, configured as ``?transport=tcp``); devices are not
        started (`up`)."""
        natlab = NatLab(lab, stun=False)
        w = cls(lab, natlab, root)
        wan = natlab.wan
        sh(["ip", "-n", wan, "addr", "add", "198.18.0.10/32", "dev", "lo"])
        home = str(root / "home")
        w.umbra_ok(wan, "--home", home, "controller", "init", "--address", CONTROLLER)
        lab.spawn(wan, "controller", [sys.executable, "-m", "umbranet.cli.main", "--home", home,
                                      "controller", "run"])  # fmt: skip

        def router_token(name: str) -> str | None:
            done = lab.umbra(wan, "--home", home, "--json", "router", "create", name)
            return json.loads(done.stdout)["enrollment_token"] if done.returncode == 0 else None

        for index, name in ((1, "r1"), (2, "r2")):
            token = wait_for("the controller", lambda n=name: router_token(n), 60)
            path = str(root / f"{name}.json")
            w.umbra_ok(wan, "router", "enroll", token, "-o", path)
            lab.spawn(wan, name, [sys.executable, "-m", "umbranet.cli.main", "router", "run",
                                  "-i", path, "--listen", f"198.18.0.{index}:7443",
                                  "--stun-listen", f"198.18.0.{index}:3478"])  # fmt: skip
        if turn:
            w.start_turn(home, tcp_only=turn_tcp)
        for device, kind in kinds.items():
            w.sites[device] = natlab.site(kind)
            token = str(root / f"dev-{device}.token")
            w.umbra_ok(wan, "--home", home, "identity", "create", f"dev-{device}", "--kind",
                       "device", "--attr", device, "-o", token)  # fmt: skip
            w.umbra_ok(wan, "enroll", token, "-o", str(root / f"dev-{device}.json"))
        for service, host, dialers in SERVICES:
            if host in kinds and dialers in kinds:
                w.umbra_ok(wan, "--home", home, "service", "create", service,
                           "--dial-attr", dialers, "--bind-attr", host,
                           "--host", "tcp://127.0.0.1:7001")  # fmt: skip
        return w

    def start_turn(self, home: str, *, tcp_only: bool = False) -> None:
        """coturn on the wan with the shared-secret scheme, and the controller told of it
        (with `tcp_only`, coturn has no UDP listener and the URL says ``transport=tcp``)."""
        wan, ip = self.natlab.wan, TURN.partition(":")[0]
        sh(["ip", "-n", wan, "addr", "add", f"{ip}/32", "dev", "lo"])
        self.lab.spawn(wan, "coturn", [
            "turnserver", "-n", f"--listening-ip={ip}", "--listening-port=3478",
            f"--relay-ip={ip}", "--use-auth-secret", f"--static-auth-secret={TURN_SECRET}",
            "--realm=natlab", "--no-tls", "--no-dtls", "--no-cli", "--min-port=49152",
            "--max-port=49300", f"--log-file={self.root / 'turnserver.log'}", "--simple-log",
            f"--pidfile={self.root / 'turn.pid'}", f"--userdb={self.root / 'turn.db'}",
            *(["--no-udp"] if tcp_only else []),
        ])  # fmt: skip
        url = "turn:" + TURN + ("?transport=tcp" if tcp_only else "")
        code = (
            "import asyncio, sys\n"
            "from umbranet.client.controller import ControllerClient\n"
            "from umbranet.controller.home import ControllerHome\n"
            "from umbranet.pki import IdentityFile\n"
            "admin = IdentityFile.load(ControllerHome(sys.argv[1]).admin_file)\n"
            "async def main():\n"
            "    async with ControllerClient(admin) as c:\n"
            "        body = {'urls': [sys.argv[2]], 'realm': 'natlab',\n"
            "                'secret': sys.argv[3], 'ttl_seconds': 3600}\n"
            "        await c._call('PUT', '/v1/network/turn', json=body)\n"
            "asyncio.run(main())\n"
        )
        self.lab.run(wan, [sys.executable, "-c", code, home, url, TURN_SECRET])

    def up(self, device: str, *extra: str) -> float:
        """Start `umbra up --tun` for `device` (with `extra` options); the monotonic time it
        was started."""
        ns = self.sites[device].hosts[0]
        self.lab.resolv_conf(ns, "nameserver 198.18.0.10\n")
        started = time.monotonic()
        self.lab.spawn(ns, f"agent-{device}", [
            sys.executable, "-m", "umbranet.cli.main", "up", "--tun", "--no-tun-dns",
            "--identity", str(self.root / f"dev-{device}.json"),
            "--state-dir", str(self.root / f"agent-{device}"), "--refresh", "0.5", *extra,
        ])  # fmt: skip
        return started

    def ping(self, device: str, address: str, wait: float = 2.0) -> bool:
        argv = self.lab.argv(self.sites[device].hosts[0],
                             ["ping", "-c", "1", "-W", str(wait), address])  # fmt: skip
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0
