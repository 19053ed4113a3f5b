"""Umbranet network mode: unmodified clients -> umbra0 (A) == WireGuard ==> umbra0 (B) -> servers.

`umbra up --tun` on both sides (the same throwaway controller and router as the other
Umbranet paths, both in B; the agent path's identities: A may dial B's three services, so B's
receiver filter lets A open tcp/5201, 7007 and 7008 on B's overlay address). The clients in A
are stock iperf3 and `bench.rr` pointed at B's overlay IPv4 address.

- `umbranet-l3`: direct UDP between the two WireGuard ports (the path is proven within a
  second of the first packet; the harness's probe waits for it).
- `umbranet-l3-relayed`: an nftables table in A drops all UDP between A and B, so every
  datagram goes through the router's relay (TLS link A -> router -> TLS link -> B). The
  table is deleted at teardown (the namespaces outlive one path).

`--no-tun-dns`: the bench resolves no overlay names and must not touch resolv.conf.
CPU of the path = both agents (+ router for the relayed row) + controller.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from bench.netns import Netns
from bench.paths import ECHO_PORT, IPERF_PORT, Endpoints, TcpTarget
from bench.paths.umbranet import Umbranet, _env

__all__ = ["UmbranetL3", "UmbranetL3Relayed"]

READY_WAIT = 90.0
_TABLE = "umbrabench"


class UmbranetL3(Umbranet):
    name = "umbranet-l3"
    title = (
        "Umbranet network mode: unmodified clients -> `umbra up --tun` (A) == WireGuard over "
        "direct UDP ==> `umbra up --tun` (B) -> the servers"
    )
    relayed = False
    _dropped_in: Netns | None = None

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        t0 = time.monotonic()
        env = _env()
        if self.relayed:
            _drop_udp(ns_a, ns_b.addr)
            self._dropped_in = ns_a
        core = self.start_core(ns_b, tmpdir, env, agent=True)
        files = core.files
        state_b, state_a = tmpdir / "agent-b", tmpdir / "agent-a"
        host_agent = self.spawn(
            ns_b, _up(files / "agent-host.json", state_b), tmpdir / "agent-b.log", env
        )
        client_agent = self.spawn(
            ns_a, _up(files / "agent-dialer.json", state_a), tmpdir / "agent-a.log", env
        )
        want = "relay" if self.relayed else "direct"
        target, path = _wait_peer(ns_a, state_a, env, want)
        cpu = {"agent(A)": client_agent, "agent(B)": host_agent, "controller(B)": core.controller}
        if self.relayed:
            cpu["router(B)"] = core.router
        return Endpoints(
            throughput=TcpTarget(ns_a.name, target, IPERF_PORT),
            rr=TcpTarget(ns_a.name, target, ECHO_PORT),
            cpu_pids=cpu,
            notes=(
                f"B's overlay address {target}; path at start: {path}",
                "WireGuard (Noise_IKpsk2, ChaCha20-Poly1305) in Python on both sides, TUN "
                "MTU 1420, UDP GSO/GRO where the kernel gives them; the receiver's stateful "
                "filter checks every packet",
                *(
                    (
                        "relayed: A drops all UDP with B (nftables), datagrams cross the "
                        f"router {core.router_addr} over both devices' TLS links",
                    )
                    if self.relayed
                    else ()
                ),
                f"setup (controller, router, enrollments, both agents up): "
                f"{time.monotonic() - t0:.1f} s",
            ),
        )

    def teardown(self) -> None:
        super().teardown()
        if self._dropped_in is not None:
            self._dropped_in.run(["nft", "delete", "table", "inet", _TABLE], check=False)
            self._dropped_in = None


class UmbranetL3Relayed(UmbranetL3):
    name = "umbranet-l3-relayed"
    title = (
        "Umbranet network mode through the router relay: as umbranet-l3, with direct UDP "
        "between A and B dropped, so WireGuard datagrams cross the router"
    )
    relayed = True
    binaries: ClassVar[Mapping[str, str]] = {"nft": "nftables"}


def _drop_udp(ns_a: Netns, peer: str) -> None:
    rules = (
        f"add table inet {_TABLE}\n"
        f"add chain inet {_TABLE} out {{ type filter hook output priority 0; }}\n"
        f"add chain inet {_TABLE} in {{ type filter hook input priority 0; }}\n"
        f"add rule inet {_TABLE} out ip daddr {peer} meta l4proto udp drop\n"
        f"add rule inet {_TABLE} in ip saddr {peer} meta l4proto udp drop\n"
    )
    subprocess.run(ns_a.argv(["nft", "-f", "-"]), input=rules.encode(), check=True, timeout=30)


def _wait_peer(ns: Netns, state: Path, env: dict[str, str], want: str) -> tuple[str, str]:
    """B's overlay IPv4 once A's agent has it as a peer on the wanted path (or any path
    after the wait, so a slow proof still measures; the note says which)."""
    argv = [sys.executable, "-m", "umbranet.cli.main", "--json", "status", "--state-dir",
            str(state)]  # fmt: skip
    deadline = time.monotonic() + READY_WAIT
    last: dict[str, object] = {}
    while time.monotonic() < deadline:
        done = subprocess.run(ns.argv(argv), capture_output=True, env=env, timeout=30, check=False)
        if done.returncode == 0:
            tun = json.loads(done.stdout).get("tun") or {}
            peers = tun.get("peers") or []
            if peers and peers[0].get("path"):
                last = peers[0]
                if last["path"] == want:
                    return str(last["ipv4"]), want
        time.sleep(0.5)
    if last.get("ipv4"):
        return str(last["ipv4"]), f"{last.get('path')} (wanted {want})"
    raise RuntimeError(f"network mode never listed B as a peer: {last!r}")


def _up(identity: Path, state_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "umbranet.cli.main", "up", "--tun", "--no-tun-dns",
        "--identity", str(identity), "--state-dir", str(state_dir),
    ]  # fmt: skip
