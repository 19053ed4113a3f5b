"""nebula: a certificate-based overlay (B is the lighthouse), stock settings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from bench.netns import Netns, sh
from bench.paths import ECHO_PORT, IPERF_PORT, Endpoints, TcpTarget, tool_version
from bench.paths._base import DaemonPath

__all__ = ["Nebula"]

OVERLAY_A = "100.64.1.1"
OVERLAY_B = "100.64.1.2"
_PORT = 4242
_TUN_MTU = 1300  # nebula's default


class Nebula(DaemonPath):
    """A -> 100.64.1.2 (nebula tun in A) == UDP ==> nebula (B, lighthouse) -> servers."""

    name = "nebula"
    title = "nebula (lighthouse in B), stock settings"
    binaries: ClassVar[Mapping[str, str]] = {"nebula": "nebula", "nebula-cert": "nebula"}

    def versions(self) -> dict[str, str]:
        deb = sh(["dpkg-query", "-W", "-f=${Version}", "nebula"], check=False).strip()
        return {"nebula": f"{tool_version(['nebula', '-version'])} (deb {deb or '?'})"}

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        ca_crt, ca_key = tmpdir / "ca.crt", tmpdir / "ca.key"
        sh(
            [
                "nebula-cert",
                "ca",
                "-name",
                "ub-bench-ca",
                "-duration",
                "48h",
                "-out-crt",
                str(ca_crt),
                "-out-key",
                str(ca_key),
            ]
        )
        pids: dict[str, int] = {}
        # B (the lighthouse) first, so A's first handshake finds it listening
        for ns, overlay, label in ((ns_b, OVERLAY_B, "b"), (ns_a, OVERLAY_A, "a")):
            crt, key = tmpdir / f"{label}.crt", tmpdir / f"{label}.key"
            sh(
                [
                    "nebula-cert",
                    "sign",
                    "-ca-crt",
                    str(ca_crt),
                    "-ca-key",
                    str(ca_key),
                    "-name",
                    f"ub-bench-{label}",
                    "-ip",
                    f"{overlay}/24",
                    "-out-crt",
                    str(crt),
                    "-out-key",
                    str(key),
                ]
            )
            config = _config(
                ca_crt,
                crt,
                key,
                ns.ifname(f"ubneb{label}"),
                lighthouse=ns is ns_b,
                lighthouse_underlay=ns_b.addr,
            )
            # JSON is YAML, so the config needs no YAML writer
            (tmpdir / f"{label}.yml").write_text(json.dumps(config, indent=1))
            role = "nebula(B,lighthouse)" if ns is ns_b else "nebula(A)"
            pids[role] = self.spawn(
                ns, ["nebula", "-config", str(tmpdir / f"{label}.yml")], tmpdir / f"{label}.log"
            )
        return Endpoints(
            throughput=TcpTarget(ns_a.name, OVERLAY_B, IPERF_PORT),
            rr=TcpTarget(ns_a.name, OVERLAY_B, ECHO_PORT),
            cpu_pids=pids,
            notes=(f"tunnel MTU {_TUN_MTU}",),
        )


def _config(
    ca: Path, crt: Path, key: Path, dev: str, *, lighthouse: bool, lighthouse_underlay: str
) -> dict[str, object]:
    allow_all = [{"port": "any", "proto": "any", "host": "any"}]
    config: dict[str, object] = {
        "pki": {"ca": str(ca), "cert": str(crt), "key": str(key)},
        "listen": {"host": "0.0.0.0", "port": _PORT},
        "punchy": {"punch": False},
        "tun": {
            "disabled": False,
            "dev": dev,
            "drop_local_broadcast": False,
            "drop_multicast": False,
            "tx_queue": 500,
            "mtu": _TUN_MTU,
        },
        "logging": {"level": "warning", "format": "text"},
        "firewall": {"outbound": allow_all, "inbound": allow_all},
    }
    if lighthouse:
        config["static_host_map"] = {}
        config["lighthouse"] = {"am_lighthouse": True}
    else:
        config["static_host_map"] = {OVERLAY_B: [f"{lighthouse_underlay}:{_PORT}"]}
        config["lighthouse"] = {"am_lighthouse": False, "interval": 60, "hosts": [OVERLAY_B]}
    return config
