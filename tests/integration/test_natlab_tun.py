"""`umbra up --tun` behind simulated NATs: routers answer STUN, devices publish candidates
through the controller, probes punch through, and WireGuard goes direct.

    A (easy NAT) ─┐
    B (easy NAT) ─┤
    C (hard NAT) ─┼── wan: controller 198.18.0.10:8443, routers r1/r2 with STUN on
    D (no UDP)   ─┘        198.18.0.1:3478 and 198.18.0.2:3478

Policy (attribute rule, `natlab_tun.SERVICES`): A-B, A-C and A-D are peers, no other pair.
Without traversal A could not reach B at all (each NAT drops what the other sends first).
Checked: A and B see each other on a direct path and a ping series between their overlay
addresses all answer; A reports C as not direct because C sits behind an address-dependent
NAT; A and D name the blocked UDP (D's firewall drops it all); each device classified its
own NAT, and `umbra netcheck` agrees, naming a home router. Relaying A-C and A-D through a
router is the relay branch's part (not here yet).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.natlab_tun import World
from tests.integration.netns_helper import Lab

SRC = str(Path(__file__).resolve().parents[2] / "src")
REPO = str(Path(__file__).resolve().parents[2])
CONTROLLER = "198.18.0.10:8443"


def _missing() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs Linux and root (network namespaces, nftables, TUN)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("ping", "iputils-ping")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SRC, REPO]))
    logs = tmp_path / "logs"
    logs.mkdir()
    lab = Lab(logs)
    try:
        kinds = {"a": "easy", "b": "easy", "c": "hard", "d": "blocked"}
        w = World.build(lab, tmp_path, kinds, turn=shutil.which("turnserver") is not None)
        for device in w.sites:
            w.up(device)
        yield w
    finally:
        lab.destroy()


def test_easy_nats_go_direct_and_a_hard_nat_is_named(world: World) -> None:
    def direct(device: str, name: str) -> bool:
        peer = world.peer(device, name)
        return peer is not None and peer.get("path") == "direct"

    wait_for("A and B on a direct path", lambda: direct("a", "dev-b") and direct("b", "dev-a"), 60)
    nat_a = world.status("a")["tun"]["nat"]
    assert nat_a["nat"] == "endpoint-independent", nat_a
    assert {c["kind"] for c in nat_a["candidates"]} == {"host", "srflx"}
    target = world.peer("a", "dev-b")
    assert target is not None
    answered = sum(world.ping("a", target["ipv4"]) for _ in range(5))
    assert answered == 5, json.dumps([world.status("a")["tun"], world.status("b")["tun"]], indent=1)
    # C: behind a random-port NAT, so no direct pair with A's filtering NAT; with the
    # network's TURN server the pair is relayed through it, else A names the reason
    if shutil.which("turnserver") is not None:
        wait_for(
            "A and C relayed through TURN",
            lambda: (
                (world.peer("a", "dev-c") or {}).get("path") == "relayed (TURN)"
                and (world.peer("c", "dev-a") or {}).get("path") == "relayed (TURN)"
            ),
            60,
        )
        target_c = world.peer("a", "dev-c")
        assert target_c is not None
        assert sum(world.ping("a", target_c["ipv4"]) for _ in range(3)) == 3
    else:
        wait_for(
            "A naming why C is not direct",
            lambda: (
                (world.peer("a", "dev-c") or {}).get("path") == "peer behind address-dependent NAT"
            ),
            60,
        )
    assert world.status("c")["tun"]["nat"]["nat"] == "endpoint-dependent"
    # D: its firewall drops all UDP; both ends say so
    wait_for(
        "A and D naming the blocked UDP",
        lambda: (
            (world.peer("a", "dev-d") or {}).get("path") == "UDP blocked at the peer"
            and (world.peer("d", "dev-a") or {}).get("path") == "UDP blocked here"
        ),
        60,
    )
    # `umbra netcheck` with the routers the controller lists
    for device, mapping in (("a", "endpoint-independent"), ("c", "endpoint-dependent")):
        identity = str(world.root / f"dev-{device}.json")
        out = world.umbra_ok(world.sites[device].hosts[0], "--json", "netcheck", "-i", identity)
        report = json.loads(out)
        assert report["udp"] is True and report["mapping"] == mapping, report
        assert report["home_router"] in {"r1", "r2"}
        assert all(v is not None for v in report["rtt_ms"].values()) and len(report["rtt_ms"]) == 2
