"""`umbra up --tun` behind simulated NATs: routers answer STUN, devices publish candidates
through the controller, probes punch through, and WireGuard goes direct.

    A (easy NAT) ─┐
    B (easy NAT) ─┤
    C (hard NAT) ─┼── wan: controller 198.18.0.10:8443, routers r1/r2 with STUN on
    D (no UDP)   ─┘        198.18.0.1:3478 and 198.18.0.2:3478

Policy (attribute rule, `natlab_tun.SERVICES`): A-B, A-C and A-D are peers, no other pair.
Without traversal A could not reach B directly (each NAT drops what the other sends first).
Every peer starts on the router relay (the relay branch's path sets); traversal's probes
add the pairs they prove. Checked: A and B move to a direct path and 5 of 5 pings between
their overlay addresses answer; A-C (hard NAT) has no direct pair: with coturn configured
at the controller it is relayed through TURN and A's ping is answered, without it A names
the reason; A and D name the blocked UDP, stay on the router relay, and A's ping reaches D
through it; each device
classified its own NAT, and `umbra netcheck` agrees, naming a home router.
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
from tests.integration.natlab_tun import World, started_world

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
    kinds = {"a": "easy", "b": "easy", "c": "hard", "d": "blocked"}
    with started_world(tmp_path, kinds, turn=shutil.which("turnserver") is not None) as w:
        yield w


def test_easy_nats_go_direct_and_a_hard_nat_is_named(world: World) -> None:
    def field(device: str, name: str, key: str) -> object:
        return (world.peer(device, name) or {}).get(key)

    def direct(device: str, name: str) -> bool:
        return field(device, name, "path_reason") == "direct" and field(device, name, "path") in {
            "direct",
            "punched",
        }

    try:
        wait_for(
            "A and B on a direct path", lambda: direct("a", "dev-b") and direct("b", "dev-a"), 60
        )
    except AssertionError:
        raise AssertionError(json.dumps([world.status(d)["tun"] for d in "ab"], indent=1)) from None
    nat_a = world.status("a")["tun"]["nat"]
    assert nat_a["nat"] == "endpoint-independent", nat_a
    assert {c["kind"] for c in nat_a["candidates"]} >= {"host", "srflx"}
    target = world.peer("a", "dev-b")
    assert target is not None
    answered = sum(world.ping("a", target["ipv4"]) for _ in range(5))
    assert answered == 5, json.dumps([world.status("a")["tun"], world.status("b")["tun"]], indent=1)
    # C: behind a random-port NAT, so no direct pair with A's filtering NAT; with the
    # network's TURN server the pair is relayed through it (which outranks the router
    # relay), else A names the reason and the router relays
    if shutil.which("turnserver") is not None:
        wait_for(
            "A and C relayed through TURN",
            lambda: (
                field("a", "dev-c", "path_reason") == "relayed (TURN)"
                and field("a", "dev-c", "path") in {"turn", "punched"}
            ),
            60,
        )
    else:
        wait_for(
            "A naming why C is not direct",
            lambda: field("a", "dev-c", "path_reason") == "peer behind address-dependent NAT",
            60,
        )
    target_c = world.peer("a", "dev-c")
    assert target_c is not None
    wait_for("A's ping answered by C", lambda: world.ping("a", target_c["ipv4"]), 30)
    assert world.status("c")["tun"]["nat"]["nat"] == "endpoint-dependent"
    # D: its firewall drops all UDP; both ends say so and put the pair on the router relay
    wait_for(
        "A and D naming the blocked UDP, on the router relay",
        lambda: (
            field("a", "dev-d", "path_reason") == "UDP blocked at the peer"
            and field("d", "dev-a", "path_reason") == "UDP blocked here"
            and field("a", "dev-d", "path") == "relay"
        ),
        60,
    )
    target_d = world.peer("a", "dev-d")
    assert target_d is not None
    wait_for(
        "A's ping answered by D through the router", lambda: world.ping("a", target_d["ipv4"]), 30
    )
    # `umbra netcheck` with the routers the controller lists
    for device, mapping in (("a", "endpoint-independent"), ("c", "endpoint-dependent")):
        identity = str(world.root / f"dev-{device}.json")
        out = world.umbra_ok(world.sites[device].hosts[0], "--json", "netcheck", "-i", identity)
        report = json.loads(out)
        assert report["udp"] is True and report["mapping"] == mapping, report
        assert report["home_router"] in {"r1", "r2"}
        assert all(v is not None for v in report["rtt_ms"].values()) and len(report["rtt_ms"]) == 2
