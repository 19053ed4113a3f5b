"""wireguard-go: userspace WireGuard (kernel WireGuard is not loadable on the reference VM)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from bench.netns import Netns, sh
from bench.paths import ECHO_PORT, IPERF_PORT, Endpoints, TcpTarget, tool_version
from bench.paths._base import DaemonPath

__all__ = ["WireguardGo"]

OVERLAY_A = "100.64.0.1"
OVERLAY_B = "100.64.0.2"
_LISTEN_PORT = 51820
_SOCKET_DIR = Path("/var/run/wireguard")  # UAPI sockets are on the shared filesystem


class WireguardGo(DaemonPath):
    """A -> 100.64.0.2 (wireguard-go tun in A) == UDP ==> wireguard-go (B) -> servers."""

    name = "wireguard"
    title = "wireguard-go (userspace), stock settings"
    binaries: ClassVar[Mapping[str, str]] = {
        "wireguard-go": "wireguard-go",
        "wg": "wireguard-tools",
    }

    def versions(self) -> dict[str, str]:
        deb = sh(["dpkg-query", "-W", "-f=${Version}", "wireguard-go"], check=False).strip()
        return {
            "wireguard-go": f"{tool_version(['wireguard-go', '--version'])} (deb {deb or '?'})",
            "wireguard-tools": tool_version(["wg", "--version"]),
        }

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        sides = (
            (ns_a, ns_a.ifname("ubwga"), OVERLAY_A, ns_b.addr),
            (ns_b, ns_b.ifname("ubwgb"), OVERLAY_B, ns_a.addr),
        )
        keys = {ns.name: _genkey() for ns, *_ in sides}
        env = {
            **os.environ,
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1",
            "LOG_LEVEL": "error",
        }
        pids: dict[str, int] = {}
        for ns, ifname, _, _ in sides:
            label = "A" if ns is ns_a else "B"
            pids[f"wireguard-go({label})"] = self.spawn(
                ns, ["wireguard-go", "-f", ifname], tmpdir / f"{ifname}.log", env
            )
        for ns, ifname, overlay, peer_underlay in sides:
            _wait_file(_SOCKET_DIR / f"{ifname}.sock")
            peer_ns = ns_b if ns is ns_a else ns_a
            peer_overlay = OVERLAY_B if ns is ns_a else OVERLAY_A
            conf = tmpdir / f"{ifname}.conf"
            conf.write_text(
                "[Interface]\n"
                f"PrivateKey = {keys[ns.name][0]}\n"
                f"ListenPort = {_LISTEN_PORT}\n"
                "[Peer]\n"
                f"PublicKey = {keys[peer_ns.name][1]}\n"
                f"Endpoint = {peer_underlay}:{_LISTEN_PORT}\n"
                f"AllowedIPs = {peer_overlay}/32\n"
            )
            conf.chmod(0o600)
            ns.run(["wg", "setconf", ifname, str(conf)])
            ns.run(["ip", "addr", "add", f"{overlay}/24", "dev", ifname])
            ns.run(["ip", "link", "set", ifname, "up"])
        mtu = ns_a.run(["cat", f"/sys/class/net/{sides[0][1]}/mtu"], check=False).strip()
        return Endpoints(
            throughput=TcpTarget(ns_a.name, OVERLAY_B, IPERF_PORT),
            rr=TcpTarget(ns_a.name, OVERLAY_B, ECHO_PORT),
            cpu_pids=pids,
            notes=(f"tunnel MTU {mtu or '?'}",),
        )


def _genkey() -> tuple[str, str]:
    """A fresh (private, public) key pair in wg's base64 form."""
    private = sh(["wg", "genkey"]).strip()
    public = subprocess.run(
        ["wg", "pubkey"],
        input=private + "\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()
    return private, public


def _wait_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear (wireguard-go failed to start?)")
        time.sleep(0.05)
