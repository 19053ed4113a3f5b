"""Network mode's parts that need no root: reading peers from a view, the crash-safe plan."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
from pathlib import Path

import pytest

from umbranet.agent import dnswire, tunplan
from umbranet.agent.config import ConfigError
from umbranet.agent.dns_stub import Answer, decide
from umbranet.agent.stats import Counters
from umbranet.agent.tunmode import SOCKET_BUFFER, enlarge_buffers, parse_peers

KEY = base64.b64encode(bytes(range(32))).decode()


def test_only_peers_with_a_key_and_an_address_are_used_and_the_rest_counted() -> None:
    counters = Counters()
    view = {
        "peers": [
            {"name": "b", "noise_public_key": KEY, "ipv4": "100.64.0.2", "ipv6": "fd00::2",
             "endpoint": "198.18.0.2:51820", "reach": ["tcp/22"]},
            {"name": "nokey", "noise_public_key": None, "ipv4": "100.64.0.3"},
            {"name": "shortkey", "noise_public_key": "AAAA", "ipv4": "100.64.0.4"},
            {"name": "noaddr", "noise_public_key": base64.b64encode(b"k" * 32).decode()},
            {"name": "badend", "noise_public_key": base64.b64encode(b"e" * 32).decode(),
             "ipv4": "100.64.0.6", "endpoint": "example.org:51820"},
        ]
    }  # fmt: skip
    peers = parse_peers(view, counters)
    assert sorted(p.name for p in peers.values()) == ["b", "badend"]
    b = peers[bytes(range(32))]
    assert b.endpoint == ("198.18.0.2", 51820)
    assert b.prefixes() == ["100.64.0.2/32", "fd00::2/128"]
    assert b.reach == ("tcp/22",)
    assert peers[b"e" * 32].endpoint is None  # a name is not an endpoint: no DNS on the data path
    assert counters.get("tun_peer_no_key") == 2
    assert counters.get("tun_peer_no_address") == 1
    assert counters.get("tun_peer_bad_endpoint") == 1


def test_the_plan_records_resolv_conf_before_any_change(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\nsearch lab.test\n")
    plan = tunplan.TunPlan.new("umbra0", resolv, "127.0.0.153")
    assert resolv.read_text() == plan.resolv_original  # nothing changed yet
    assert plan.resolv_ours is not None
    assert "nameserver 127.0.0.153" in plan.resolv_ours and "search lab.test" in plan.resolv_ours
    tunplan.record(tmp_path, plan.with_index(7))
    assert tunplan.leftovers(tmp_path) == plan.with_index(7)
    tunplan.write_resolv(plan)
    assert resolv.read_text() == plan.resolv_ours
    assert tunplan.TunPlan.new("umbra0", None, "127.0.0.153").resolv_path is None


def test_a_symlinked_resolv_conf_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "managed"
    target.write_text("nameserver 127.0.0.53\n")
    link = tmp_path / "resolv.conf"
    link.symlink_to(target)
    with pytest.raises(ConfigError) as caught:
        tunplan.TunPlan.new("umbra0", link, "127.0.0.153")
    assert caught.value.code == "resolv_conf_managed"


def test_leftovers_of_another_namespace_or_unreadable_are_refused(tmp_path: Path) -> None:
    assert tunplan.leftovers(tmp_path) is None
    assert tunplan.uninstall(tmp_path) == []
    plan = tunplan.TunPlan(netns=1, ifname="umbra0")  # no namespace has inode 1
    tunplan.record(tmp_path, plan)
    with pytest.raises(ConfigError) as caught:
        tunplan.uninstall(tmp_path)
    assert caught.value.code == "wrong_namespace"
    (tmp_path / tunplan.STATE_FILE).write_text(json.dumps({"bogus": 1}))
    with pytest.raises(ConfigError) as caught:
        tunplan.leftovers(tmp_path)
    assert caught.value.code == "bad_state"


def test_peer_names_answer_a_and_aaaa_and_other_names_keep_their_old_answers() -> None:
    names, names6 = (
        {"dev-b.umbra": "100.64.0.2", "web.umbra": "100.80.0.1"},
        {"dev-b.umbra": "fd00::2"},
    )

    def ask(name: str, qtype: int) -> list[bytes]:
        answer = decide(dnswire.build_query(7, name, qtype), names, names6=names6)
        assert isinstance(answer, Answer)
        return [r.data for r in dnswire.parse_message(answer.data).answers]

    assert ask("dev-b.umbra", dnswire.TYPE_A) == [ipaddress.IPv4Address("100.64.0.2").packed]
    assert ask("DEV-B.umbra.", dnswire.TYPE_AAAA) == [ipaddress.IPv6Address("fd00::2").packed]
    assert ask("web.umbra", dnswire.TYPE_AAAA) == []  # a service's proxy address: NODATA
    assert ask("web.umbra", dnswire.TYPE_A) == [ipaddress.IPv4Address("100.80.0.1").packed]


def test_the_wireguard_socket_gets_large_kernel_buffers_or_the_most_it_may() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        default = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        enlarge_buffers(sock)
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        sent = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    if os.geteuid() == 0:  # FORCE passes the sysctl cap (Linux reports twice the size asked)
        assert got >= SOCKET_BUFFER and sent >= SOCKET_BUFFER
    else:  # capped at net.core.rmem_max, never below what it had
        assert got >= default
