"""Subnet routers, exit nodes, network rules and IPv6 in network namespaces.

    A (dev-a)  ─┐                                     ┌─ L: a LAN host 10.91.0.2, no Umbranet
    B (dev-b)  ─┼── bridge in R (controller .254) ── GW (dev-gw) ─┤
                │   devices at 198.18.91.1, .2, .10               └─ I: "internet" 203.0.113.1,
                │   relay router at .253                                2001:db8:91::1

GW runs ``umbra up --tun --advertise-routes 10.91.0.0/24 --advertise-exit-node``: the admin
approves the subnet with ``umbra route approve``, the exit node is approved by the policy's
``autoApprovers``. A runs ``--exit-node dev-gw`` (LAN not allowed: only the controller stays
outside the tunnel). The policy's ``network`` rules let dev-a reach the LAN on tcp/8080 and
ICMP, the internet on tcp/8081 and ICMP, and dev-gw's overlay address on tcp/9000; dev-b
gets nothing.

Checked: A reaches the LAN host (ping, TCP) through GW and the LAN host sees GW's address
(masquerade); a LAN port not granted is dropped at GW and counted; B has no peer, no route
and no way in; A's traffic to the internet leaves through GW (I sees GW's addresses, IPv4
and IPv6) while A's WireGuard datagrams take the underlay (the firewall mark), so nothing
loops; ping6 and TCP over the overlay's IPv6; a policy change stops A's live TCP flow into
the LAN (time printed); A's links to a router (at an address of its own, inside the exit
route) carry the mark too: its link for services comes up, and with UDP between A and GW
dropped A reaches the internet through GW over the router's relay; after SIGKILL +
``umbra down`` (GW, A) and ``umbra down`` (B), links, addresses, routes, rules, nftables,
forwarding switches and resolv.conf are as before.
"""

from __future__ import annotations

import contextlib
import ipaddress
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

CORE = "198.18.91.254"
CONTROLLER = f"{CORE}:8443"
# The relay router on an address of its own: the controller's is kept out of the exit route
# by a rule, a router's only by the mark on the agent's link to it.
ROUTER_ADDRESS = "198.18.91.253"
ROUTER = f"{ROUTER_ADDRESS}:7443"
DEVICES = {"a": "198.18.91.1", "b": "198.18.91.2", "gw": "198.18.91.10"}
LAN_HOST, LAN_GW, LAN = "10.91.0.2", "10.91.0.1", "10.91.0.0/24"
NET_HOST, NET_GW = "203.0.113.1", "203.0.113.254"
NET_HOST6, NET_GW6 = "2001:db8:91::1", "2001:db8:91::fe"
RESOLV_CONF = f"nameserver {CORE}\n"
MARK = "0x756d"

POLICY = """{
  "tagOwners": {"tag:router": []},
  "network": [
    {"src": ["dev-a"], "dst": ["10.91.0.0/24:8080", "10.91.0.0/24:8083",
     "autogroup:internet:8081,8082", "dev-gw:9000"], "proto": ["tcp"]},
    {"src": ["dev-a"], "dst": ["10.91.0.0/24", "autogroup:internet", "dev-gw"],
     "proto": ["icmp"]},
  ],
  "autoApprovers": {"exitNode": ["tag:router"]},
}"""
# The same without the LAN's tcp/8080: A's live flow there must stop.
POLICY_NO_8080 = POLICY.replace('"10.91.0.0/24:8080", ', "")

# A TCP client for a live flow: one byte echoed every 0.1 s; prints and exits when an echo
# does not come back within 2 s (or after 300 rounds).
KEEPALIVE = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(2)
print("connected", flush=True)
for _ in range(300):
    try:
        s.sendall(b"x")
        if s.recv(1) != b"x":
            break
    except OSError:
        break
    print("ok", time.monotonic(), flush=True)
    time.sleep(0.1)
print("stopped", time.monotonic(), flush=True)
"""


def _missing() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "network mode needs Linux and root (network namespaces, TUN)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    for tool, package in (
        ("ip", "iproute2"), ("ping", "iputils-ping"), ("socat", "socat"), ("nft", "nftables"),
    ):  # fmt: skip
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


@dataclass
class Net:
    lab: Lab
    root: Path
    ns: dict[str, str] = field(default_factory=dict)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def home(self) -> str:
        return str(self.root / "home")

    def state_dir(self, device: str) -> Path:
        return self.root / f"agent-{device}"

    def tun(self, device: str) -> dict[str, Any]:
        status = LocalApiClient(self.state_dir(device) / "agent.sock").get("/v1/status")
        tun: dict[str, Any] = status["tun"]
        return tun

    def run(self, device: str, *argv: str, check: bool = True) -> str:
        return self.lab.run(self.ns[device], list(argv), check, 30)

    def snapshot(self, device: str) -> dict[str, str]:
        """Everything network mode may change in a device's namespace."""
        return {
            "link": self.run(device, "ip", "-o", "link", "show"),
            "addr": self.run(device, "ip", "-o", "addr", "show"),
            "route4": self.run(device, "ip", "-4", "route", "show", "table", "all"),
            "route6": self.run(device, "ip", "-6", "route", "show", "table", "all"),
            "rule4": self.run(device, "ip", "-4", "rule"),
            "rule6": self.run(device, "ip", "-6", "rule"),
            "nft": self.run(device, "nft", "list", "ruleset"),
            "forwarding": self.run(
                device, "sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"
            ),
            "resolv": self.run(device, "cat", "/etc/resolv.conf"),
        }

    def up(self, device: str, *extra: str) -> None:
        child = self.lab.spawn(
            self.ns[device],
            f"agent-{device}",
            [
                sys.executable, "-m", "umbranet.cli.main", "up", "--tun",
                "--identity", str(self.root / f"dev-{device}.json"),
                "--state-dir", str(self.state_dir(device)), "--refresh", "0.5", *extra,
            ],
        )  # fmt: skip
        self.agents[device] = child

        def ready() -> bool:
            if child.poll() is not None:
                log = (self.lab.logs / f"agent-{device}.log").read_text()
                pytest.fail(f"agent {device} exited with {child.returncode}: {log[-3000:]}")
            return bool(self.tun(device)["interface"])

        wait_for(f"agent {device} in network mode", ready, 60)

    def admin(self, *args: str) -> str:
        done = self.lab.umbra(self.ns["core"], "--home", self.home, *args)
        assert done.returncode == 0, f"umbra {' '.join(args)}: {done.stderr}{done.stdout}"
        return done.stdout


def _veth(lab: Lab, left: str, right: str, tag: str) -> tuple[str, str]:
    a, b = f"ur{lab.suffix}{tag}a"[:15], f"ur{lab.suffix}{tag}b"[:15]
    sh(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
    sh(["ip", "link", "set", a, "netns", left])
    sh(["ip", "link", "set", b, "netns", right])
    sh(["ip", "-n", left, "link", "set", a, "up"])
    sh(["ip", "-n", right, "link", "set", b, "up"])
    return a, b


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("netroutes")
    logs = root / "logs"
    logs.mkdir()
    lab = Lab(logs)
    try:
        net = Net(lab, root)
        r = lab.namespace("R")
        net.ns["core"] = r
        sh(["ip", "-n", r, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", r, "addr", "add", f"{CORE}/24", "dev", "br0"])
        sh(["ip", "-n", r, "addr", "add", f"{ROUTER_ADDRESS}/24", "dev", "br0"])
        sh(["ip", "-n", r, "link", "set", "br0", "up"])
        for index, (device, address) in enumerate(DEVICES.items()):
            ns = lab.namespace(device.upper())
            net.ns[device] = ns
            inner, outer = _veth(lab, ns, r, str(index))
            sh(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", inner])
            sh(["ip", "-n", r, "link", "set", outer, "master", "br0"])
            lab.resolv_conf(ns, RESOLV_CONF)
        gw = net.ns["gw"]
        net.ns["lan"] = lab.namespace("L")
        gw_side, lan_side = _veth(lab, gw, net.ns["lan"], "l")
        sh(["ip", "-n", gw, "addr", "add", f"{LAN_GW}/24", "dev", gw_side])
        sh(["ip", "-n", net.ns["lan"], "addr", "add", f"{LAN_HOST}/24", "dev", lan_side])
        net.ns["inet"] = lab.namespace("I")
        gw_side, net_side = _veth(lab, gw, net.ns["inet"], "i")
        sh(["ip", "-n", gw, "addr", "add", f"{NET_GW}/24", "dev", gw_side])
        sh(["ip", "-n", gw, "addr", "add", f"{NET_GW6}/64", "dev", gw_side, "nodad"])
        sh(["ip", "-n", net.ns["inet"], "addr", "add", f"{NET_HOST}/24", "dev", net_side])
        sh(["ip", "-n", net.ns["inet"], "addr", "add", f"{NET_HOST6}/64", "dev", net_side,
            "nodad"])  # fmt: skip
        _start_controller(net)
        yield net
    finally:
        for child in list(net.agents.values()) if "net" in locals() else []:
            lab.stop(child)
        lab.destroy()


def _start_controller(net: Net) -> None:
    lab, r = net.lab, net.ns["core"]
    net.admin("controller", "init", "--address", CONTROLLER)
    argv = [sys.executable, "-m", "umbranet.cli.main", "--home", net.home, "controller", "run"]
    lab.spawn(r, "controller", argv)
    wait_for("the controller", lambda: lab.umbra(r, "--home", net.home, "--json", "service",
                                                 "list").returncode == 0, 60)  # fmt: skip
    token = json.loads(net.admin("--json", "router", "create", "relay1"))["enrollment_token"]
    router_file = str(net.root / "relay1.json")
    done = lab.umbra(r, "router", "enroll", token, "-o", router_file)
    assert done.returncode == 0, done.stderr
    lab.spawn(r, "router", [sys.executable, "-m", "umbranet.cli.main", "router", "run",
                            "-i", router_file, "--listen", ROUTER])  # fmt: skip
    for device in DEVICES:
        token = str(net.root / f"dev-{device}.token")
        attrs = ["--attr", "router"] if device == "gw" else []
        net.admin("identity", "create", f"dev-{device}", "--kind", "device", *attrs, "-o", token)
        done = lab.umbra(r, "enroll", token, "-o", str(net.root / f"dev-{device}.json"))
        assert done.returncode == 0, done.stderr
    policy = net.root / "policy.hujson"
    policy.write_text(POLICY)
    net.admin("policy", "set", str(policy))


def _ping(net: Net, device: str, target: str, *flags: str) -> bool:
    done = subprocess.run(
        net.lab.argv(net.ns[device], ["ping", *flags, "-c", "1", "-W", "2", target]),
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    return done.returncode == 0


def _tcp(net: Net, device: str, address: str, port: int) -> str | None:
    """What a TCP connection to address:port says, or None if it cannot connect."""
    target = f"TCP6:[{address}]:{port}" if ":" in address else f"TCP:{address}:{port}"
    done = subprocess.run(
        net.lab.argv(net.ns[device], ["socat", "-T", "3", "-", f"{target},connect-timeout=3"]),
        input=b"", capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    return done.stdout.decode() if done.returncode == 0 else None


def _path(net: Net, device: str) -> str | None:
    peers = net.tun(device)["peers"]
    return str(peers[0]["path"]) if peers else None


def _router_link(net: Net, device: str) -> str | None:
    """The state of the device's link to the router, as `umbra status` shows it."""
    status = LocalApiClient(net.state_dir(device) / "agent.sock").get("/v1/status")
    links = [r["link"] for r in status["routers"] if r["address"] == ROUTER]
    return str(links[0]) if links else None


def _listen(net: Net, where: str, port: int, reply: str, *, v6: bool = False) -> Any:
    kind = "TCP6-LISTEN" if v6 else "TCP-LISTEN"
    return net.lab.spawn(net.ns[where], f"listen-{where}-{port}",
                         ["socat", f"{kind}:{port},fork,reuseaddr", f"SYSTEM:{reply}"])  # fmt: skip


def test_subnet_router_exit_node_network_rules_and_ipv6_and_down_leaves_no_trace(
    net: Net,
) -> None:
    before = {device: net.snapshot(device) for device in DEVICES}
    net.up("gw", "--advertise-routes", LAN, "--advertise-exit-node")
    net.up("a", "--exit-node", "dev-gw")
    net.up("b")
    listeners = [
        _listen(net, "lan", 8080, "cat"),
        _listen(net, "lan", 22, "echo ssh"),
        _listen(net, "lan", 8083, 'echo "from $SOCAT_PEERADDR"'),
        _listen(net, "inet", 8081, 'echo "from $SOCAT_PEERADDR"'),
        _listen(net, "inet", 8082, 'echo "v6 from $SOCAT_PEERADDR"', v6=True),
    ]
    try:
        routes = json.loads(net.admin("--json", "route", "list"))
        assert {(r["prefix"], r["approved"]) for r in routes} == {
            (LAN, None),
            ("0.0.0.0/0", "policy"),
            ("::/0", "policy"),
        }
        net.admin("route", "approve", "dev-gw", LAN)

        def a_has_routes() -> bool:
            peers = net.tun("a")["peers"]
            return [p["name"] for p in peers] == ["dev-gw"] and set(peers[0]["routes"]) == {
                LAN,
                "0.0.0.0/0",
                "::/0",
            }

        wait_for("A to be given GW's routes", a_has_routes, 30)
        gw = net.tun("gw")

        # The LAN, through the subnet router; the LAN host sees GW (masquerade).
        wait_for("A to ping the LAN host", lambda: _ping(net, "a", LAN_HOST), 30)
        assert _tcp(net, "a", LAN_HOST, 8083) == f"from {LAN_GW}\n"
        live = net.lab.spawn(net.ns["a"], "keepalive",
                             [sys.executable, "-c", KEEPALIVE, LAN_HOST, "8080"])  # fmt: skip
        assert _tcp(net, "a", LAN_HOST, 22) is None  # not granted: dropped at GW
        said = net.admin("policy", "explain", "dev-a", f"{LAN_HOST}:22/tcp")
        assert said.startswith("DENY") and f"routed via dev-gw ({LAN})" in said, said
        said = net.admin("--json", "policy", "explain", "dev-a", f"{LAN_HOST}:8080/tcp")
        assert json.loads(said)["allowed"] is True, said
        assert net.tun("gw")["filter"]["drops"].get("route_no_grant", 0) >= 1

        # B: policy gives it nothing, so no peer, no route, no way into the LAN.
        assert net.tun("b")["peers"] == []
        assert not _ping(net, "b", LAN_HOST)
        assert "10.91." not in net.run("b", "ip", "route", "show", "table", "all")

        # The internet, through the exit node; tunnel datagrams keep to the underlay.
        assert _tcp(net, "a", NET_HOST, 8081) == f"from {NET_GW}\n"
        assert _ping(net, "a", NET_HOST)
        assert _ping(net, "a", NET_HOST6, "-6")
        said = _tcp(net, "a", NET_HOST6, 8082) or ""
        assert ipaddress.ip_address(said.split()[-1].strip("[]")) == ipaddress.ip_address(NET_GW6)
        underlay = net.run("a", "ip", "route", "get", DEVICES["gw"], "mark", MARK)
        assert "umbra0" not in underlay, underlay
        assert "umbra0" in net.run("a", "ip", "route", "get", NET_HOST)
        controller_path = net.run("a", "ip", "route", "get", CORE)
        assert "umbra0" not in controller_path, controller_path

        # IPv6 over the overlay: ping6 and TCP to GW's own address.
        v6_listener = _listen(net, "gw", 9000, "echo v6-ok", v6=True)
        listeners.append(v6_listener)
        assert _ping(net, "a", gw["ipv6"], "-6")
        wait_for(
            "TCP over the overlay's IPv6", lambda: _tcp(net, "a", gw["ipv6"], 9000) == "v6-ok\n"
        )

        # A policy change stops A's live flow into the LAN at its next packet.
        log = net.lab.logs / "keepalive.log"
        wait_for("the live flow", lambda: "ok" in log.read_text(), 30)
        (net.root / "policy2.hujson").write_text(POLICY_NO_8080)
        changed = time.monotonic()
        net.admin("policy", "set", str(net.root / "policy2.hujson"))
        returned = time.monotonic()
        wait_for("the live flow to stop", lambda: "stopped" in log.read_text(), 30)
        last_ok = max(
            float(line.split()[1]) for line in log.read_text().splitlines() if line[:2] == "ok"
        )
        print(
            f"\nlast echo of the live flow {last_ok - changed:+.2f} s after `policy set` began, "
            f"{last_ok - returned:+.2f} s after it returned"
        )
        assert net.tun("gw")["filter"]["drops"].get("route_no_grant", 0) >= 2
        net.lab.stop(live)

        # A's links to the router: the exit route covers the router's address, and what it
        # took would reach GW as traffic no rule grants. Their mark keeps them out: the link
        # for services is up, and with A's path to GW forced through the router relay (a
        # link that would otherwise carry itself) the internet is still reached.
        assert "umbra0" in net.run("a", "ip", "route", "get", ROUTER_ADDRESS)
        wait_for("A's link to the router", lambda: _router_link(net, "a") == "up", 30)
        net.lab.block_udp(net.ns["a"], DEVICES["gw"])
        try:
            wait_for("A's path to GW to be the relay", lambda: _path(net, "a") == "relay", 60)
            wait_for("A to ping the internet over the relay", lambda: _ping(net, "a", NET_HOST))
            assert _tcp(net, "a", NET_HOST, 8081) == f"from {NET_GW}\n"
            assert _path(net, "a") == "relay"
        finally:
            net.lab.unblock_udp(net.ns["a"])

        # A's controller clients. The rule for the controller's address keeps other processes'
        # packets to it out of the tunnel; the agent's own carry the mark and need no rule,
        # which is how it reaches a replica learned later at an address no rule names.
        net.run("a", "ip", "rule", "del", "priority", "7560")
        assert "umbra0" in net.run("a", "ip", "route", "get", CORE)
        refreshed = LocalApiClient(net.state_dir("a") / "agent.sock").post("/v1/refresh", {})
        assert refreshed == {"refreshed": True, "error": None}

        # Crashes: GW and A are killed; `umbra down` undoes what their plans recorded.
        for device in ("gw", "a"):
            net.lab.stop(net.agents.pop(device), signal.SIGKILL)
        assert "umbranet_tun" in net.run("gw", "nft", "list", "tables")
        assert MARK in net.run("a", "ip", "rule")
        for device in ("gw", "a", "b"):
            done = net.lab.umbra(net.ns[device], "--json", "down", "--state-dir",
                                 str(net.state_dir(device)))  # fmt: skip
            assert done.returncode == 0, done.stderr
        net.agents.pop("b", None)

        # A subnet router that keeps clients' own addresses (--no-snat-subnet-routes): the
        # LAN routes A's overlay address back via GW and sees it; the internet still sees GW.
        net.up("gw", "--advertise-routes", LAN, "--advertise-exit-node", "--no-snat-subnet-routes")
        net.up("a", "--exit-node", "dev-gw")
        a_ipv4 = net.tun("a")["ipv4"]
        net.lab.run(net.ns["lan"], ["ip", "route", "add", f"{a_ipv4}/32", "via", LAN_GW])
        wait_for("A to be given GW's routes again", a_has_routes, 30)
        said = wait_for("A to reach the LAN", lambda: _tcp(net, "a", LAN_HOST, 8083), 30)
        assert said == f"from {a_ipv4}\n"
        assert _tcp(net, "a", NET_HOST, 8081) == f"from {NET_GW}\n"
        for device in ("gw", "a"):  # a clean stop undoes everything (checked below)
            net.lab.stop(net.agents.pop(device))
    finally:
        for child in listeners:
            net.lab.stop(child)
        for device, child in list(net.agents.items()):
            net.lab.stop(child)
            with contextlib.suppress(Exception):
                net.lab.umbra(net.ns[device], "down", "--state-dir", str(net.state_dir(device)))
    for device in DEVICES:
        assert net.snapshot(device) == before[device], device
        assert not (net.state_dir(device) / "tunmode.json").exists()
