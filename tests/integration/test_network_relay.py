"""Network mode through a router relay, in network namespaces: `umbra up --tun` on three
devices, a controller and a router.

    A (dev-a) ─┐
    B (dev-b) ─┼── bridge in R: controller 198.18.92.254:8443, router :7443 (metrics :9464)
    C (dev-c) ─┘   devices at 198.18.92.1, .2, .3

Policy as in `test_network_mode.py`: A and B may talk (each hosts a port the other may
dial), C has no grant. Each device keeps a link to the router and presents the relay
tickets of its view.

Checked: A and B start with the relay and the direct path, move to direct once proven
(ping, TCP, iperf3 if installed); an nftables rule in A dropping all UDP between A and B
sends both back to the relay, where ping, TCP and iperf3 keep working and the router
counts relayed datagrams; C, with no relay ticket for A, gets nothing relayed to A (the
router counts ``relay_not_allowed``, and tells C why a forged ticket was refused); after
``umbra down`` nothing is left. The router holds no WireGuard key and only ever carries
datagrams sealed by the devices (`tests/unit/test_wireguard_paths_driver.py` checks a
plaintext marker never appears in what is relayed).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.netns_helper import Lab, sh
from tests.integration.test_network_mode import Net, _missing, _ping, _tcp, _umbra_ok
from umbranet.pki import IdentityFile

INTRUDER = str(Path(__file__).with_name("netmode_relay_intruder.py"))
CORE = "198.18.92.254"
CONTROLLER = f"{CORE}:8443"
ROUTER = f"{CORE}:7443"
ROUTER2 = f"{CORE}:7444"  # started late: where the relay links move when ROUTER dies
METRICS = f"{CORE}:9464"
DEVICES = {"a": "198.18.92.1", "b": "198.18.92.2", "c": "198.18.92.3"}
PORT_A, PORT_B = 7101, 7102

pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    if shutil.which("nft") is None:
        pytest.skip("`nft` is not installed (Debian package nftables)")
    root = tmp_path_factory.mktemp("netrelay")
    logs = root / "logs"
    logs.mkdir()
    lab = Lab(logs)
    net = Net(lab, root)
    try:
        r = lab.namespace("R")
        net.core = r
        sh(["ip", "-n", r, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", r, "addr", "add", f"{CORE}/24", "dev", "br0"])
        sh(["ip", "-n", r, "link", "set", "br0", "up"])
        for index, (device, address) in enumerate(DEVICES.items()):
            ns = lab.namespace(device.upper())
            net.ns[device] = ns
            inner, outer = f"ur{lab.suffix}{index}d", f"ur{lab.suffix}{index}r"
            sh(["ip", "link", "add", inner, "type", "veth", "peer", "name", outer])
            sh(["ip", "link", "set", inner, "netns", ns])
            sh(["ip", "link", "set", outer, "netns", r])
            sh(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", inner])
            sh(["ip", "-n", ns, "link", "set", inner, "up"])
            sh(["ip", "-n", r, "link", "set", outer, "master", "br0"])
            sh(["ip", "-n", r, "link", "set", outer, "up"])
            lab.resolv_conf(ns, f"nameserver {CORE}\n")
        _start_core(net, r)
        yield net
    finally:
        for child in list(net.agents.values()):
            lab.stop(child)
        lab.destroy()


def _start_core(net: Net, r: str) -> None:
    lab, home = net.lab, str(net.root / "home")
    _umbra_ok(lab, r, "--home", home, "controller", "init", "--address", CONTROLLER)
    main = [sys.executable, "-m", "umbranet.cli.main"]
    lab.spawn(r, "controller", [*main, "--home", home, "controller", "run"])

    def router_created() -> bool:
        return lab.umbra(r, "--home", home, "service", "list").returncode == 0

    wait_for("the controller", router_created, 60)
    _start_router(net, "relay1", ROUTER, "--metrics-listen", METRICS)
    wait_for("the router", lambda: _router_metric(net, "umbra_router_links") is not None, 30)
    for device in DEVICES:
        path = str(net.root / f"dev-{device}.token")
        _umbra_ok(lab, r, "--home", home, "identity", "create", f"dev-{device}",
                  "--kind", "device", "--attr", device, "-o", path)  # fmt: skip
        _umbra_ok(lab, r, "enroll", path, "-o", str(net.root / f"dev-{device}.json"))
    for service, host, dialer, port in (("on-a", "a", "b", PORT_A), ("on-b", "b", "a", PORT_B)):
        _umbra_ok(lab, r, "--home", home, "service", "create", service, "--dial-attr", dialer,
                  "--bind-attr", host, "--host", f"tcp://127.0.0.1:{port}")  # fmt: skip


def _start_router(net: Net, name: str, listen: str, *extra: str) -> None:
    """Create, enroll and run router `name` in the core namespace, listening at `listen`."""
    lab, home = net.lab, str(net.root / "home")
    done = lab.umbra(net.core, "--home", home, "--json", "router", "create", name)
    assert done.returncode == 0, done.stderr
    token = str(json.loads(done.stdout)["enrollment_token"])
    router_file = str(net.root / f"{name}.json")
    _umbra_ok(lab, net.core, "router", "enroll", token, "-o", router_file)
    argv = [sys.executable, "-m", "umbranet.cli.main", "router", "run", "-i", router_file]
    lab.spawn(net.core, name, [*argv, "--listen", listen, *extra])


def _is_router(child: subprocess.Popen[bytes], listen: str) -> bool:
    argv = [str(a) for a in child.args] if isinstance(child.args, list) else []
    return "router" in argv and listen in argv


def _knows_router(net: Net, device: str, address: str) -> bool:
    return any(r["address"] == address for r in net.status(device)["routers"])


def _live_relay(net: Net, device: str) -> str | None:
    """The address of the router the device's live relay link goes to."""
    relay = net.tun(device)["relay"]
    return str(relay["address"]) if relay and relay["live"] else None


def _router_metric(net: Net, name: str, label: str = "") -> float | None:
    text = net.lab.run(net.core, ["curl", "-s", "--max-time", "3", f"http://{METRICS}/metrics"])
    for line in text.splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] == name:
                return float(value)
    return None


def _path(net: Net, device: str) -> str | None:
    peers = net.tun(device)["peers"]
    return str(peers[0]["path"]) if peers else None


def _iperf(net: Net, server_addr: str) -> float | None:
    """Mbit/s of a 2 s iperf3 TCP run from A to B's granted port; None without iperf3."""
    if shutil.which("iperf3") is None:
        return None
    serve = ["iperf3", "-s", "-B", server_addr, "-p", str(PORT_B)]
    server = net.lab.spawn(net.ns["b"], "iperf3", serve)
    try:
        argv = ["iperf3", "-J", "-t", "2", "--connect-timeout", "3000", "-c", server_addr,
                "-p", str(PORT_B)]  # fmt: skip
        received = net.lab.iperf3(net.ns["a"], argv)
        return float(received["bits_per_second"]) / 1e6
    finally:
        net.lab.stop(server)


def test_direct_then_forced_through_the_router_relay_and_policy_gates_the_relay(
    net: Net,
) -> None:
    before = {device: net.snapshot(device) for device in DEVICES}
    for device in DEVICES:
        net.up(device)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        a, b = net.tun("a"), net.tun("b")

        def relayed_and_keyed() -> bool:
            return all(
                net.tun(d)["relay"] and net.tun(d)["relay"]["live"] and _path(net, d)
                for d in ("a", "b")
            )

        wait_for("A and B to have a relay link and each other", relayed_and_keyed, 60)
        assert net.tun("c")["peers"] == []

        # Direct: proven by an authenticated exchange, then used.
        wait_for("A to ping B", lambda: _ping(net, "a", b["ipv4"]), 30)
        wait_for("both on the direct path",
                 lambda: _ping(net, "a", b["ipv4"]) and _path(net, "a") == "direct"
                 and _path(net, "b") == "direct", 30)  # fmt: skip
        direct_mbps = _iperf(net, b["ipv4"])
        echo = ["socat", f"TCP-LISTEN:{PORT_B},fork,reuseaddr", f"SYSTEM:echo hi-{PORT_B}"]
        servers.append(net.lab.spawn(net.ns["b"], "listen", echo))
        wait_for("B's port, direct", lambda: _tcp(net, "a", b["ipv4"], PORT_B) == f"hi-{PORT_B}\n")
        relayed_before = _router_metric(net, "umbra_router_relay_datagrams_total") or 0.0

        # Forced through the relay: A drops all UDP with B. Pings keep the flow busy so
        # the silence is noticed; both sides fall back within the keepalive deadline.
        net.lab.block_udp(net.ns["a"], DEVICES["b"])
        started = time.monotonic()

        def fell_back() -> bool:
            _ping(net, "a", b["ipv4"])
            return _path(net, "a") == "relay" and _path(net, "b") == "relay"

        wait_for("both back on the relay", fell_back, 45)
        print(f"\nfell back to the relay {time.monotonic() - started:.1f} s after the cut")
        try:
            wait_for("A to ping B through the relay", lambda: _ping(net, "a", b["ipv4"]), 20)
        except AssertionError:
            for d in ("a", "b"):
                t = net.tun(d)
                print(d, json.dumps({k: t[k] for k in ("io", "relay", "device", "peers")}))
            print(net.lab.run(net.core, ["curl", "-s", f"http://{METRICS}/metrics"])[-3000:])
            raise
        assert _ping(net, "b", a["ipv4"])
        assert _tcp(net, "a", b["ipv4"], PORT_B) == f"hi-{PORT_B}\n"
        net.lab.stop(servers.pop())
        relayed_mbps = _iperf(net, b["ipv4"])
        print(f"iperf3 A->B 2 s: direct {direct_mbps} Mbit/s, relayed {relayed_mbps} Mbit/s")
        relayed = _router_metric(net, "umbra_router_relay_datagrams_total") or 0.0
        assert relayed > relayed_before, (relayed_before, relayed)
        assert net.tun("a")["io"].get("relay_datagrams_out", 0) > 0

        # C may not talk to A: it has no relay ticket for A's key; its datagrams and a
        # forged ticket are refused and counted at the router, and A receives nothing.
        a_in = net.tun("a")["io"].get("relay_datagrams_in", 0)
        a_key = base64.b64encode(IdentityFile.load(net.root / "dev-a.json").noise_public_key)
        tried = json.loads(net.run("c", sys.executable, INTRUDER, "--identity",
                                   str(net.root / "dev-c.json"), "--router", ROUTER,
                                   "--peer-key", a_key.decode()))  # fmt: skip
        assert tried["sent"] >= 5 and tried["received"] == 0, tried
        assert tried["refused"].get("ticket_invalid", 0) == 1, tried
        refused = _router_metric(net, "umbra_router_refused_total", 'code="relay_not_allowed"')
        assert refused is not None and refused >= 7, refused
        assert _ping(net, "a", b["ipv4"])  # the relay still serves the allowed pair
        a_io = net.tun("a")["io"]
        # what A got relayed since is B's traffic only (the ping above), nothing from C
        assert net.tun("a")["device"]["drops"].get("unknown_peer", 0) == 0, a_io
        assert a_io.get("relay_datagrams_in", 0) >= a_in

        # The relay router dies: A's and B's relay links move to the other router within
        # seconds (not at the next refresh), and traffic keeps flowing through it.
        _start_router(net, "relay2", ROUTER2)
        wait_for("the agents to learn relay2", lambda: _knows_router(net, "a", ROUTER2), 30)
        net.lab.stop(next(c for c in net.lab.children.values() if _is_router(c, ROUTER)))
        moved = time.monotonic()

        def relayed_via_relay2() -> bool:
            return all(_live_relay(net, d) == ROUTER2 for d in ("a", "b"))

        wait_for("the relay links to move to relay2", relayed_via_relay2, 30)
        wait_for("A to ping B through relay2", lambda: _ping(net, "a", b["ipv4"]), 20)
        print(f"relay links moved, ping through relay2 {time.monotonic() - moved:.1f} s after")
        assert _path(net, "a") == "relay"
        assert net.status("a")["counters"].get("tun_relay_moved", 0) >= 1
    finally:
        for child in servers:
            net.lab.stop(child)
        for device, child in list(net.agents.items()):
            net.lab.stop(child)
            with contextlib.suppress(Exception):
                net.umbra(device, "down", "--state-dir", str(net.state_dir(device)))
        net.agents.clear()
        with contextlib.suppress(Exception):
            net.lab.unblock_udp(net.ns["a"])
    for device in DEVICES:
        assert net.snapshot(device) == before[device], device
