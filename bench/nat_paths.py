"""Network mode behind NATs, as rows of `python -m bench` (issue 14's benchmark).

Both namespaces get a NAT in nftables on their own UDP (the bench's A and B are hosts, so
the NAT is applied to what each sends and receives itself, as the NAT lab's routers do to a
LAN; TCP, and so the TLS links to the router, is left alone):

- `umbranet-l3-nat-easy`: endpoint-independent mapping (``masquerade``: a socket keeps its
  port whatever the destination) and inbound UDP only as replies of flows that went out
  (``ct state new`` dropped). Both devices probe each other at once, the holes line up, and
  WireGuard goes direct: the row measures the direct path behind easy NATs.
- `umbranet-l3-nat-hard`: address-and-port-dependent mapping with random ports
  (``masquerade fully-random``) and the same filtering, on both sides: no pair of
  addresses works, so every datagram crosses the router relay (hard-hard stays relayed).

Both agents refresh every `REFRESH` seconds (as the NAT lab's tests do), so each reads the
other's candidates soon after they are published. Besides throughput and RR, the setup
times both `umbra up --tun` to the first answered ping from A to B's overlay address
(relayed at first) and, behind easy NATs, to both devices reporting a direct path; the
notes give both (seconds, this run).

    sudo python -m bench --paths umbranet-l3-nat-easy,umbranet-l3-nat-hard --runs 3
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from bench.netns import Netns
from bench.paths import ECHO_PORT, IPERF_PORT, Endpoints, TcpTarget
from bench.paths.umbranet import _env
from bench.paths.umbranet_l3 import UmbranetL3, _up

__all__ = ["UmbranetNatEasy", "UmbranetNatHard", "nat_rules"]

READY_WAIT = 90.0
REFRESH = 1.0
_TABLE = "umbrabenchnat"


def nat_rules(peer: str, *, hard: bool) -> str:
    """The NAT of one host towards `peer`, for UDP only."""
    masquerade = "masquerade fully-random" if hard else "masquerade"
    return (
        f"add table ip {_TABLE}\n"
        f"add chain ip {_TABLE} post {{ type nat hook postrouting priority srcnat; }}\n"
        f"add chain ip {_TABLE} in {{ type filter hook input priority filter; }}\n"
        f"add rule ip {_TABLE} post ip daddr {peer} meta l4proto udp {masquerade}\n"
        f"add rule ip {_TABLE} in ip saddr {peer} meta l4proto udp ct state new drop\n"
    )


class UmbranetNatEasy(UmbranetL3):
    name = "umbranet-l3-nat-easy"
    title = (
        "Umbranet network mode behind easy NATs (endpoint-independent mapping, filtering) on "
        "both sides: hole punched, WireGuard over direct UDP"
    )
    hard = False
    binaries: ClassVar[Mapping[str, str]] = {
        "nft": "nftables",
        "ping": "iputils-ping",
        "conntrack": "conntrack",
    }
    _natted: tuple[Netns, ...] = ()

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        t0 = time.monotonic()
        env = _env()
        for ns, peer in ((ns_a, ns_b.addr), (ns_b, ns_a.addr)):
            rules = nat_rules(peer, hard=self.hard).encode()
            subprocess.run(ns.argv(["nft", "-f", "-"]), input=rules, check=True, timeout=30)
            # The namespaces outlive a path: UDP flows an earlier path left in conntrack
            # would carry this one's datagrams past the new NAT, un-NATed
            ns.run(["conntrack", "-D", "-p", "udp"], check=False)
        self._natted = (ns_a, ns_b)
        core = self.start_core(ns_b, tmpdir, env, agent=True)
        files = core.files
        state_b, state_a = tmpdir / "agent-b", tmpdir / "agent-a"
        started = time.monotonic()
        # --refresh: a device reads its peers' candidates when it refreshes; without it the
        # one that reads first may see none until the next epoch or the 300 s safety poll
        refresh = ["--refresh", str(REFRESH)]
        host_agent = self.spawn(
            ns_b, [*_up(files / "agent-host.json", state_b), *refresh], tmpdir / "agent-b.log", env
        )
        client_agent = self.spawn(
            ns_a,
            [*_up(files / "agent-dialer.json", state_a), *refresh],
            tmpdir / "agent-a.log",
            env,
        )
        timing = _time_paths(ns_a, state_a, state_b, started, want_direct=not self.hard)
        cpu = {"agent(A)": client_agent, "agent(B)": host_agent, "controller(B)": core.controller}
        if self.hard:
            cpu["router(B)"] = core.router
        return Endpoints(
            throughput=TcpTarget(ns_a.name, timing.target, IPERF_PORT),
            rr=TcpTarget(ns_a.name, timing.target, ECHO_PORT),
            cpu_pids=cpu,
            notes=(
                f"B's overlay address {timing.target}; path when measured: {timing.path}",
                f"`umbra up --tun` (both) -> first answered ping A->B: {_s(timing.first)}",
                f"`umbra up --tun` (both) -> both devices on a direct path: {_s(timing.direct)}",
                "NAT: nftables on each side's own UDP, "
                + ("masquerade fully-random" if self.hard else "masquerade")
                + ", unsolicited inbound UDP dropped",
                f"setup (controller, router, enrollments, both agents up): "
                f"{time.monotonic() - t0:.1f} s",
            ),
        )

    def teardown(self) -> None:
        super().teardown()
        for ns in self._natted:
            ns.run(["nft", "delete", "table", "ip", _TABLE], check=False)
            ns.run(["conntrack", "-D", "-p", "udp"], check=False)
        self._natted = ()


class UmbranetNatHard(UmbranetNatEasy):
    name = "umbranet-l3-nat-hard"
    title = (
        "Umbranet network mode behind hard NATs (random port per destination, filtering) on "
        "both sides: no direct pair, WireGuard through the router relay"
    )
    hard = True


class _Timing:
    def __init__(self) -> None:
        self.target = ""
        self.path = "none"
        self.first: float | None = None
        self.direct: float | None = None


def _time_paths(
    ns_a: Netns, state_a: Path, state_b: Path, started: float, *, want_direct: bool
) -> _Timing:
    """Poll both agents' local API and ping from A until the first answer and (if wanted)
    both sides direct; bounded by `READY_WAIT`. Relayed rows wait a few seconds more, so
    a direct path that would appear late is seen (and named in the notes)."""
    from umbranet.agent import LocalApiClient

    timing = _Timing()
    deadline = started + READY_WAIT
    settle: float | None = None
    while time.monotonic() < deadline:
        a = _peer(LocalApiClient(state_a / "agent.sock"))
        b = _peer(LocalApiClient(state_b / "agent.sock"))
        if a is not None and a.get("ipv4"):
            timing.target, timing.path = str(a["ipv4"]), str(a.get("path"))
            if timing.first is None and _ping(ns_a, timing.target):
                timing.first = time.monotonic() - started
                settle = time.monotonic() + 5.0
        both_direct = all(p is not None and p.get("path") in ("direct", "punched") for p in (a, b))
        if both_direct and timing.direct is None:
            timing.direct = time.monotonic() - started
        settled = settle is not None and time.monotonic() >= settle
        if timing.first is not None and (timing.direct is not None if want_direct else settled):
            return timing
        time.sleep(0.05)
    if not timing.target:
        raise RuntimeError("network mode never listed B as a peer")
    return timing


def _peer(client: Any) -> dict[str, Any] | None:
    try:
        peers = client.get("/v1/status")["tun"]["peers"]
    except Exception:  # the agent is not up yet
        return None
    return dict(peers[0]) if peers else None


def _ping(ns: Netns, address: str) -> bool:
    argv = ns.argv(["ping", "-c", "1", "-W", "0.5", address])
    return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"
