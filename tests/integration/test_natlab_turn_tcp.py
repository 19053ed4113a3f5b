"""`umbra up --tun` relayed through a TURN server reachable only over TCP, in the NAT lab.

    A (easy NAT) ─┐
                  ├── wan: controller, routers r1/r2 (STUN), coturn at 198.18.0.3:3478 with
    C (hard NAT) ─┘        no UDP listener, configured as ``turn:...?transport=tcp``

A and C have no direct pair (C's NAT gives each destination a random port, A's drops what
it did not ask for), so the network's TURN server is their relayed path. coturn listens on
TCP only, so every TURN message of A and C crossed a stream (`aio/turn_bridge.py`), while
the relay towards the peer is UDP as usual. Checked: A reports C `relayed (TURN)` and its
pings to C's overlay address are answered.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.natlab_tun import World, started_world
from tests.integration.test_natlab_tun import REPO, SRC, _missing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="needs coturn (Debian coturn)"),
]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SRC, REPO]))
    with started_world(tmp_path, {"a": "easy", "c": "hard"}, turn=True, turn_tcp=True) as w:
        yield w


def test_a_tcp_only_turn_server_relays_a_hard_nat_pair(world: World) -> None:
    def field(device: str, name: str, key: str) -> object:
        return (world.peer(device, name) or {}).get(key)

    try:
        wait_for(
            "A and C relayed through TURN over TCP",
            lambda: (
                field("a", "dev-c", "path_reason") == "relayed (TURN)"
                and field("a", "dev-c", "path") in {"turn", "punched"}
            ),
            60,
        )
    except AssertionError:
        tails = {p.name: p.read_text()[-2500:] for p in world.lab.logs.glob("agent-*")}
        states = [world.status(d)["tun"] for d in "ac"]
        raise AssertionError(json.dumps({"status": states, "logs": tails}, indent=1)) from None
    target = world.peer("a", "dev-c")
    assert target is not None
    wait_for("A's ping answered by C", lambda: world.ping("a", target["ipv4"]), 30)
    answered = sum(world.ping("a", target["ipv4"]) for _ in range(3))
    assert answered == 3
    # A's TURN messages crossed its TCP bridge (coturn has no UDP listener to take them)
    bridge = world.status("a")["tun"]["nat"]["turn_bridge"]
    assert bridge is not None and bridge["closed"] is None, bridge
    assert bridge["io"]["to_server"] > 0 and bridge["io"]["from_server"] > 0, bridge
