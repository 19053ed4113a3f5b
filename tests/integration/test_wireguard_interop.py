"""Interop: a stock wireguard-go + `wg` peer and the Umbranet WireGuard machine ping each other.

This is the check that the data plane is WireGuard and not something like it: the other end
is the reference userspace implementation, configured with `wg set` exactly as an
administrator would, holding an Umbranet identity's X25519 key as its peer's public key.

    namespace G: wireguard-go (wg0 198.19.77.1/24, 2001:2:0:77::1/64)
                 --veth 198.18.77.1 <-> 198.18.77.2--
    namespace U: tests/integration/wg_umbra_peer.py (TUN wgu0 198.19.77.2/24, ...::2/64)

Needs root, /dev/net/tun and the Debian packages wireguard-go, wireguard-tools, iproute2
and iputils-ping; skips with the reason otherwise. Namespaces are deleted in a finally.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.integration.netns_helper import Lab
from umbranet.pki.keys import generate_noise_keypair

# Tunnel addresses: IPv4 198.19.77.0/24 and IPv6 from the benchmarking range 2001:2::/48
# (RFC 5180), inside the test's own namespaces only.
G6, U6 = "2001:2:0:77::1", "2001:2:0:77::2"
PEER_SCRIPT = str(Path(__file__).with_name("wg_umbra_peer.py"))
SRC = str(Path(__file__).resolve().parents[2] / "src")
REPO = str(Path(__file__).resolve().parents[2])


def _missing() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "the WireGuard interop test needs Linux and root (network namespaces, TUN)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    for tool, package in (
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
        ("ip", "iproute2"),
        ("ping", "iputils-ping"),
    ):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _wait_for_line(log: Path, marker: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if log.exists() and marker in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{marker!r} never appeared in {log.name}: {log.read_text()[-2000:]}")


def _wait_listening(lab: Lab, ns: str, port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if f":{port} " in lab.run(ns, ["ss", "-Hltn"], check=False):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} in {ns}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.destroy()


@dataclass
class Setup:
    g: str
    u: str
    umbra_public: bytes
    peer_log: Path
    peer: subprocess.Popen[bytes]


def _setup(lab: Lab, tmp_path: Path, mp: pytest.MonkeyPatch, *extra: str) -> Setup:
    g = lab.namespace("wgg")
    u = lab.namespace("wgu")
    lab.link(g, "198.18.77.1/24", u, "198.18.77.2/24")

    umbra_private, umbra_public = generate_noise_keypair()  # an Umbranet identity's Noise key
    go_key = X25519PrivateKey.generate()
    go_private = go_key.private_bytes_raw()
    go_public = go_key.public_key().public_bytes_raw()

    # The reference side: wireguard-go in the foreground, configured with `wg set`.
    lab.spawn(g, "wireguard-go", ["wireguard-go", "-f", "wg0"])
    for _ in range(100):
        if "wg0" in lab.run(g, ["ip", "-o", "link", "show"], check=False):
            break
        time.sleep(0.1)
    key_file = tmp_path / "go.key"
    key_file.write_text(_b64(go_private) + "\n")
    key_file.chmod(0o600)
    lab.run(g, ["wg", "set", "wg0", "private-key", str(key_file), "listen-port", "51820",
                "peer", _b64(umbra_public), "allowed-ips", f"198.19.77.2/32,{U6}/128",
                "endpoint", "198.18.77.2:51821"])  # fmt: skip
    lab.run(g, ["ip", "addr", "add", "198.19.77.1/24", "dev", "wg0"])
    lab.run(g, ["ip", "-6", "addr", "add", f"{G6}/64", "dev", "wg0", "nodad"])
    lab.run(g, ["ip", "link", "set", "wg0", "up"])

    # The Umbranet side: the sans-IO machine over a real UDP socket and a TUN.
    mp.setenv("PYTHONPATH", os.pathsep.join([SRC, REPO, os.environ.get("PYTHONPATH", "")]))
    peer = lab.spawn(u, "umbra-peer", [sys.executable, PEER_SCRIPT,
                                "--private-key", _b64(umbra_private),
                                "--listen", "198.18.77.2:51821",
                                "--peer", _b64(go_public),
                                "--endpoint", "198.18.77.1:51820",
                                "--allowed", "198.19.77.1/32",
                                "--allowed", f"{G6}/128",
                                "--address6", f"{U6}/64",
                                "--address", "198.19.77.2/24",
                                "--seconds", "90", *extra])  # fmt: skip
    log = tmp_path / "umbra-peer.log"
    _wait_for_line(log, "READY")
    return Setup(g, u, umbra_public, log, peer)


def _peer_statistics(lab: Lab, setup: Setup) -> dict[str, Any]:
    lab.stop(setup.peer)
    text = setup.peer_log.read_text()
    both = json.loads(text.split("STATS ", 1)[1].splitlines()[0])
    print("umbranet peer io:", both["io"])  # batching counters, for the record (-s)
    stats: dict[str, Any] = both["device"]
    return stats


def test_wireguard_go_and_umbranet_ping_each_other(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = _setup(lab, tmp_path, monkeypatch)
    g, u, umbra_public = setup.g, setup.u, setup.umbra_public

    # The Umbranet side initiates (its first packet to the peer starts the handshake) ...
    lab.run(u, ["ping", "-c", "3", "-i", "0.2", "-W", "5", "198.19.77.1"], timeout=60)
    # ... then wireguard-go forgets the session and initiates a fresh one: we answer as the
    # responder and switch to the new session when its first data arrives.
    lab.run(g, ["wg", "set", "wg0", "peer", _b64(umbra_public), "remove"])
    lab.run(g, ["wg", "set", "wg0", "peer", _b64(umbra_public),
                "allowed-ips", f"198.19.77.2/32,{U6}/128",
                "endpoint", "198.18.77.2:51821"])  # fmt: skip
    lab.run(g, ["ping", "-c", "3", "-i", "0.2", "-W", "5", "198.19.77.2"], timeout=60)
    # Large packets: padding and lengths survive both ways.
    lab.run(g, ["ping", "-c", "2", "-s", "1300", "-W", "5", "198.19.77.2"], timeout=60)
    lab.run(u, ["ping", "-c", "2", "-s", "1300", "-W", "5", "198.19.77.1"], timeout=60)
    # IPv6 inside the tunnel, both ways.
    lab.run(g, ["ping", "-6", "-c", "2", "-W", "5", U6], timeout=60)
    lab.run(u, ["ping", "-6", "-c", "2", "-W", "5", G6], timeout=60)

    if shutil.which("iperf3"):
        # TCP through the tunnel both ways (the interop check names iperf3); the
        # figure is printed for the record, never asserted against a threshold.
        server = lab.spawn(u, "iperf3-server", ["iperf3", "-s", "-B", "198.19.77.2"])
        _wait_listening(lab, u, 5201)
        for extra in ([], ["-R"]):
            argv = ["iperf3", "-c", "198.19.77.2", "-t", "2", "-J", *extra]
            received = lab.iperf3(g, argv)
            print(f"iperf3 {extra}: {received['bits_per_second'] / 1e6:.0f} Mbit/s")
        lab.stop(server)

    handshakes = lab.run(g, ["wg", "show", "wg0", "latest-handshakes"]).split()
    assert handshakes[0] == _b64(umbra_public) and int(handshakes[1]) > 0
    transfer = lab.run(g, ["wg", "show", "wg0", "transfer"]).split()
    assert int(transfer[1]) > 0 and int(transfer[2]) > 0  # bytes received and sent

    stats = _peer_statistics(lab, setup)
    counts = stats["counts"]
    assert counts["rx_packets"] >= 10 and counts["tx_packets"] >= 10
    assert counts["tx_initiations"] >= 1 and counts["rx_initiations"] >= 1  # both roles
    assert counts["handshakes_completed"] >= 2
    # Nothing that arrived was refused (the kernel's own IPv6 chatter into the TUN has no
    # route to the peer and is counted as tx_no_route, which is expected).
    assert {r: n for r, n in stats["drops"].items() if not r.startswith("tx_")} == {}


def test_wireguard_go_retries_with_our_cookie_when_we_are_under_load(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our side acts as if under a flood: every handshake without a valid MAC2 gets a cookie
    # reply. wireguard-go must open it (XChaCha20-Poly1305 under our cookie key, bound to its
    # MAC1) and retry REKEY_TIMEOUT later with a MAC2 we accept.
    setup = _setup(lab, tmp_path, monkeypatch, "--always-under-load")
    lab.run(setup.g, ["ping", "-c", "1", "-W", "15", "198.19.77.2"], timeout=60)
    stats = _peer_statistics(lab, setup)
    assert stats["counts"]["tx_cookie_replies"] >= 1
    assert stats["counts"]["rx_initiations"] >= 1
    assert stats["drops"].get("under_load_no_cookie", 0) >= 1
