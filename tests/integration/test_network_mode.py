"""Network mode in network namespaces: `umbra up --tun` on three devices, one controller.

    A (dev-a) ─┐
    B (dev-b) ─┼── bridge in R (controller at 198.18.90.254:8443)
    C (dev-c) ─┘   devices at 198.18.90.1, .2, .3 (namespaces made for the test, deleted after)

Policy (the attribute rule, no HuJSON document): dev-a hosts ``on-a`` (tcp 7001), which
dev-b may dial; dev-b hosts ``on-b`` (tcp 7002), which dev-a may dial; dev-c has no grant
at all. So A and B are each other's peers, each may open the other's one port (and ping),
and C is nobody's peer: it never receives their keys or addresses and cannot reach them.
WireGuard runs directly between the devices over UDP on the bridge; each device publishes
its port and the controller records the address it sees.

Checked: ping between overlay addresses both ways, IPv6 too, and by name (``dev-b.umbra``,
A and AAAA, through the DNS stub); a TCP port the receiver's policy does not grant is
dropped there and counted (``no_grant``) while the granted one answers; C (IPv6 turned off)
comes up with IPv4 only, has no peers and no route, and gets no answer even with A's key;
garbage at A's port is counted; disabling dev-b makes A forget it through the pushed epoch;
after ``umbra down`` (A after SIGKILL) links, addresses, routes and resolv.conf are as before.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.integration.netns_helper import Lab, sh
from umbranet.agent import LocalApiClient
from umbranet.pki import IdentityFile

INTRUDER = str(Path(__file__).with_name("netmode_intruder.py"))

CORE = "198.18.90.254"
CONTROLLER = f"{CORE}:8443"
DEVICES = {"a": "198.18.90.1", "b": "198.18.90.2", "c": "198.18.90.3"}
RESOLV_CONF = f"nameserver {CORE}\nsearch lab.test\n"
PORT_A, PORT_B, CLOSED_PORT = 7001, 7002, 7777


def _missing() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "network mode needs Linux and root (network namespaces, TUN)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    for tool, package in (("ip", "iproute2"), ("ping", "iputils-ping"), ("socat", "socat")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


@dataclass
class Net:
    lab: Lab
    root: Path
    ns: dict[str, str] = field(default_factory=dict)
    core: str = ""
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def state_dir(self, device: str) -> Path:
        return self.root / f"agent-{device}"

    def status(self, device: str) -> dict[str, Any]:
        data: dict[str, Any] = LocalApiClient(self.state_dir(device) / "agent.sock").get(
            "/v1/status"
        )
        return data

    def tun(self, device: str) -> dict[str, Any]:
        tun: dict[str, Any] = self.status(device)["tun"]
        return tun

    def run(self, device: str, *argv: str, check: bool = True, timeout: float = 30) -> str:
        return self.lab.run(self.ns[device], list(argv), check, timeout)

    def snapshot(self, device: str) -> dict[str, str]:
        """Everything network mode may change in a device's namespace."""
        return {
            "link": self.run(device, "ip", "-o", "link", "show"),
            "addr": self.run(device, "ip", "-o", "addr", "show"),
            "route4": self.run(device, "ip", "-4", "route", "show", "table", "all"),
            "route6": self.run(device, "ip", "-6", "route", "show", "table", "all"),
            "rule": self.run(device, "ip", "rule"),
            "resolv": self.run(device, "cat", "/etc/resolv.conf"),
        }

    def up(self, device: str) -> subprocess.Popen[bytes]:
        child = self.lab.spawn(
            self.ns[device],
            f"agent-{device}",
            [
                sys.executable, "-m", "umbranet.cli.main", "up", "--tun",
                "--identity", str(self.root / f"dev-{device}.json"),
                "--state-dir", str(self.state_dir(device)),
                "--refresh", "0.5",
            ],
        )  # fmt: skip
        self.agents[device] = child

        def ready() -> bool:
            if child.poll() is not None:
                log = (self.lab.logs / f"agent-{device}.log").read_text()
                pytest.fail(f"agent {device} exited with {child.returncode}: {log[-3000:]}")
            return bool(self.tun(device)["interface"])

        wait_for(f"agent {device} in network mode", ready, 60)
        return child

    def umbra(self, device: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.lab.umbra(self.ns[device], *args)


def _umbra_ok(lab: Lab, ns: str, *args: str) -> str:
    done = lab.umbra(ns, *args)
    assert done.returncode == 0, f"umbra {' '.join(args)}: {done.stderr}{done.stdout}"
    return done.stdout


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("netmode")
    logs = root / "logs"
    logs.mkdir()
    lab = Lab(logs)
    try:
        net = Net(lab, root)
        r = lab.namespace("R")
        net.core = r
        sh(["ip", "-n", r, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", r, "addr", "add", f"{CORE}/24", "dev", "br0"])
        sh(["ip", "-n", r, "link", "set", "br0", "up"])
        for index, (device, address) in enumerate(DEVICES.items()):
            ns = lab.namespace(device.upper())
            net.ns[device] = ns
            inner, outer = f"un{lab.suffix}{index}d", f"un{lab.suffix}{index}r"
            sh(["ip", "link", "add", inner, "type", "veth", "peer", "name", outer])
            sh(["ip", "link", "set", inner, "netns", ns])
            sh(["ip", "link", "set", outer, "netns", r])
            sh(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", inner])
            sh(["ip", "-n", ns, "link", "set", inner, "up"])
            sh(["ip", "-n", r, "link", "set", outer, "master", "br0"])
            sh(["ip", "-n", r, "link", "set", outer, "up"])
            lab.resolv_conf(ns, RESOLV_CONF)
        # C runs without IPv6: network mode must still come up there, with IPv4 only.
        net.run("c", "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1")  # fmt: skip
        _start_controller(net, r)
        yield net
    finally:
        for child in list(net.agents.values()) if "net" in locals() else []:
            lab.stop(child)
        lab.destroy()


def _start_controller(net: Net, r: str) -> None:
    lab, home = net.lab, str(net.root / "home")
    _umbra_ok(lab, r, "--home", home, "controller", "init", "--address", CONTROLLER)
    lab.spawn(
        r,
        "controller",
        [sys.executable, "-m", "umbranet.cli.main", "--home", home, "controller", "run"],
    )

    def controller_up() -> bool:
        done = lab.umbra(r, "--home", home, "--json", "service", "list")
        return done.returncode == 0

    wait_for("the controller", controller_up, 60)
    for device in DEVICES:
        token = str(net.root / f"dev-{device}.token")
        _umbra_ok(lab, r, "--home", home, "identity", "create", f"dev-{device}",
                  "--kind", "device", "--attr", device, "-o", token)  # fmt: skip
        _umbra_ok(lab, r, "enroll", token, "-o", str(net.root / f"dev-{device}.json"))
    for service, host, dialer, port in (("on-a", "a", "b", PORT_A), ("on-b", "b", "a", PORT_B)):
        _umbra_ok(lab, r, "--home", home, "service", "create", service, "--dial-attr", dialer,
                  "--bind-attr", host, "--host", f"tcp://127.0.0.1:{port}")  # fmt: skip


def _ping(net: Net, device: str, target: str, *flags: str) -> bool:
    done = subprocess.run(
        net.lab.argv(net.ns[device], ["ping", *flags, "-c", "1", "-W", "2", target]),
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.returncode == 0


def _tcp(net: Net, device: str, address: str, port: int) -> str | None:
    """What a TCP connection to address:port says, or None if it cannot connect."""
    done = subprocess.run(
        net.lab.argv(
            net.ns[device], ["socat", "-T", "3", "-", f"TCP:{address}:{port},connect-timeout=3"]
        ),
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.stdout.decode() if done.returncode == 0 else None


def _send_udp(net: Net, device: str, host: str, port: int, hex_data: str) -> None:
    code = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.sendto(bytes.fromhex('{hex_data}'), ('{host}', {port}))"
    )
    net.run(device, sys.executable, "-c", code)


def test_devices_ping_by_address_and_name_policy_decides_and_down_leaves_no_trace(
    net: Net,
) -> None:
    before = {device: net.snapshot(device) for device in DEVICES}
    for device in DEVICES:
        net.up(device)
    try:
        a, b = net.tun("a"), net.tun("b")

        def peers_ready() -> bool:
            pa, pb = net.tun("a")["peers"], net.tun("b")["peers"]
            return (
                [p["name"] for p in pa] == ["dev-b"]
                and [p["name"] for p in pb] == ["dev-a"]
                and all(p["endpoint"] and p["routed"] for p in pa + pb)
            )

        wait_for("A and B to know each other", peers_ready, 60)
        a_peer, b_peer = net.tun("a")["peers"][0], net.tun("b")["peers"][0]
        assert a_peer["ipv4"] == b["ipv4"] and b_peer["ipv4"] == a["ipv4"]
        assert a_peer["endpoint"] == f"{DEVICES['b']}:51820"  # what the controller saw
        # What each peer may open towards the device holding the view: its hosted port.
        assert a_peer["reach"] == ["tcp/7001", "icmp"] and b_peer["reach"] == ["tcp/7002", "icmp"]
        assert net.tun("c")["peers"] == []  # no grant: no key, no address, no route
        assert net.status("c")["counters"].get("tun_ipv6_unavailable") == 1

        wait_for("A to ping B", lambda: _ping(net, "a", b["ipv4"]), 30)
        assert _ping(net, "b", a["ipv4"])
        assert _ping(net, "a", b["ipv6"], "-6")
        assert _ping(net, "b", a["ipv6"], "-6")
        assert _ping(net, "a", "dev-b.umbra")
        resolved = net.run("a", "getent", "ahostsv4", "dev-b.umbra")
        assert resolved.split()[0] == b["ipv4"]
        resolved6 = net.run("a", "getent", "ahostsv6", "dev-b.umbra")
        assert resolved6.split()[0] == b["ipv6"]
        assert _ping(net, "a", "dev-b.umbra", "-6")
        assert (
            net.umbra("a", "ip", "-4", "--state-dir", str(net.state_dir("a"))).stdout.strip()
            == (a["ipv4"])
        )

        # C: no route to the overlay at all, so nothing leaves; and it never got a key.
        assert not _ping(net, "c", a["ipv4"])
        assert "100.64" not in net.run("c", "ip", "route", "show", "table", "all")

        # C knows A's public key anyway (keys are not secret) and tries a handshake and a
        # ping: A has no peer with C's key, so it answers nothing and counts it.
        a_key = base64.b64encode(IdentityFile.load(net.root / "dev-a.json").noise_public_key)
        tried = json.loads(net.run("c", sys.executable, INTRUDER, "--identity",
                           str(net.root / "dev-c.json"), "--peer-key", a_key.decode(),
                           "--endpoint", f"{DEVICES['a']}:51820", "--src", "100.64.0.99",
                           "--dst", a["ipv4"], "--seconds", "2"))  # fmt: skip
        assert tried["sent"] >= 1 and tried["received"] == 0, tried
        assert net.tun("a")["device"]["drops"].get("unknown_peer", 0) >= 1

        # Policy at the receiver: B grants A tcp/7002 only.
        listeners = [
            net.lab.spawn(net.ns["b"], f"listen-{port}", [
                "socat", f"TCP-LISTEN:{port},fork,reuseaddr", f"SYSTEM:echo hi-{port}",
            ])
            for port in (PORT_B, CLOSED_PORT)
        ]  # fmt: skip
        try:
            wait_for(
                "B's granted port", lambda: _tcp(net, "a", b["ipv4"], PORT_B) == f"hi-{PORT_B}\n"
            )
            assert _tcp(net, "a", b["ipv4"], CLOSED_PORT) is None
            # TCP crossed a TUN with segmentation offload (where the kernel grants it) and
            # no frame the kernel wrote was refused
            for device in ("a", "b"):
                tun_io = net.tun(device)["tun_io"]
                assert tun_io["vnet"] and tun_io["tso"], tun_io
                assert not [k for k in tun_io if k.startswith("vnet_")], tun_io
            drops = net.tun("b")["filter"]["drops"]
            assert drops.get("no_grant", 0) >= 1, drops
            human = _umbra_ok(
                net.lab, net.ns["b"], "status", "--state-dir", str(net.state_dir("b"))
            )
            assert "network mode" in human and "no_grant=" in human and "dev-a" in human
            # B's own connection outwards to A's port 7777 is refused by A in turn.
            assert _tcp(net, "b", a["ipv4"], CLOSED_PORT) is None
            assert net.tun("a")["filter"]["drops"].get("no_grant", 0) >= 1
        finally:
            for child in listeners:
                net.lab.stop(child)

        # Garbage at A's WireGuard port from C: counted by reason, and A and B still talk.
        for blob in ("01", "04" + "00" * 40, "ff" * 200):
            _send_udp(net, "c", DEVICES["a"], 51820, blob)

        def garbage_counted() -> dict[str, int] | None:
            drops: dict[str, int] = net.tun("a")["device"]["drops"]
            seen = sum(drops.get(k, 0) for k in ("bad_length", "bad_type", "unknown_index"))
            return drops if seen >= 3 else None

        drops = wait_for("A to count the garbage", garbage_counted)
        assert _ping(net, "b", a["ipv4"]), drops

        # Disabling dev-b: the controller pushes a new epoch, A refreshes its view at once
        # and forgets B (key, route, grant), so A's pings stop.
        started = time.monotonic()
        _umbra_ok(net.lab, net.core, "--home", str(net.root / "home"), "identity", "disable",
                  "dev-b")  # fmt: skip
        done = time.monotonic()
        wait_for("A to drop B", lambda: net.tun("a")["peers"] == [], 10)
        dropped = time.monotonic()
        print(
            f"\nA dropped disabled B {dropped - started:.2f} s after `umbra identity disable` "
            f"started, {dropped - done:.2f} s after it returned"
        )
        assert not _ping(net, "a", b["ipv4"])
        assert net.status("a")["counters"].get("epoch_refresh", 0) >= 1

        # A crashes (SIGKILL): its resolv.conf still names the stub until `umbra down`.
        net.lab.stop(net.agents.pop("a"), signal.SIGKILL)
        assert "127.0.0.153" in net.run("a", "cat", "/etc/resolv.conf")
        down_a = json.loads(_umbra_ok(net.lab, net.ns["a"], "--json", "down", "--state-dir",
                                      str(net.state_dir("a"))))  # fmt: skip
        assert down_a["stopped"] is None and any("restored" in c for c in down_a["cleaned"])
        for device in ("b", "c"):
            down = json.loads(
                _umbra_ok(net.lab, net.ns[device], "--json", "down", "--state-dir",
                          str(net.state_dir(device)))
            )  # fmt: skip
            assert down["stopped"] == net.agents.pop(device).pid
    finally:
        for device, child in list(net.agents.items()):
            net.lab.stop(child)
            with contextlib.suppress(Exception):
                net.umbra(device, "down", "--state-dir", str(net.state_dir(device)))
    for device in DEVICES:
        assert net.snapshot(device) == before[device], device
        assert not (net.state_dir(device) / "tunmode.json").exists()
