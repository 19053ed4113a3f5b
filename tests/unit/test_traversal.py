"""NAT traversal beside a WireGuard device on one port: demultiplexing, gathering, and the
device's endpoint following the selected probe pair."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.wireguard_harness import A_IP, B_IP, ipv4_packet, key, seeded
from umbranet.proto.ice import Candidate, PathSelected
from umbranet.proto.stun import BindingResponder
from umbranet.proto.traversal import Traversal, is_wireguard
from umbranet.proto.wireguard import Device, PacketsReceived
from umbranet.proto.wireguard.crypto import public_key
from umbranet.testing.clock import FakeClock

A = ("198.18.1.2", 51820)
B = ("198.18.2.2", 51820)
STUN = [("198.18.0.1", 3478), ("198.18.0.2", 3478)]


def setup() -> tuple[FakeClock, Traversal, Traversal]:
    clock = FakeClock(start=datetime(2026, 12, 4, 12, 0, tzinfo=UTC))
    da, db = Device(key("a"), random_bytes=seeded(1)), Device(key("b"), random_bytes=seeded(2))
    # no endpoints: only traversal will find where the other one is
    da.add_peer(public_key(key("b")), allowed_ips=[f"{B_IP}/32"])
    db.add_peer(public_key(key("a")), allowed_ips=[f"{A_IP}/32"])
    ta = Traversal(da, key("a"), public_key(key("a")), random_bytes=seeded(3))
    tb = Traversal(db, key("b"), public_key(key("b")), random_bytes=seeded(4))
    return clock, ta, tb


def run(clock: FakeClock, sides: dict[tuple[str, int], Traversal], seconds: float) -> None:
    responder = BindingResponder()
    end = clock.mono + seconds
    for _ in range(10_000):
        for src, side in sides.items():
            while (out := side.poll_all_transmit()) is not None:
                data, dst = out
                if dst in STUN:
                    answer = responder.handle_datagram(data, src)
                    if answer is not None:
                        side.handle_datagram(answer, dst, clock.now())
                elif dst in sides:
                    sides[dst].handle_datagram(data, src, clock.now())
        deadlines = [d.at for s in sides.values() if (d := s.poll_timeout()) is not None]
        if not deadlines or min(deadlines) > end:
            return
        clock.advance(max(0.0, min(deadlines) - clock.mono))
        for side in sides.values():
            side.handle_timeout(clock.now())


def test_probes_point_the_device_at_the_peer_and_wireguard_flows() -> None:
    clock, ta, tb = setup()
    sides = {A: ta, B: tb}
    ta.gather(STUN, clock.now())
    tb.gather(STUN, clock.now())
    run(clock, sides, 1.0)
    assert not ta.gathering
    ga = ta.gathered(["198.18.1.2", "127.0.0.1"], 51820)
    gb = tb.gathered(["198.18.2.2"], 51820)
    assert ga.nat == "no-nat" and ga.candidates == [Candidate("host", A)]
    assert all(v is not None for v in ga.rtt.values())
    # before any path: WireGuard has nowhere to send
    ta.send_packet(ipv4_packet(A_IP, B_IP, b"early"), clock.now())
    assert ta.device.statistics()["drops"] == {"tx_no_endpoint": 1}  # type: ignore[index]
    ta.set_peer(public_key(key("b")), gb.candidates, clock.now())
    tb.set_peer(public_key(key("a")), ga.candidates, clock.now())
    run(clock, sides, 2.0)
    event = ta.poll_path_event()
    assert isinstance(event, PathSelected) and event.address == B
    assert ta.device.endpoint_of(public_key(key("b"))) == B
    assert tb.device.endpoint_of(public_key(key("a"))) == A
    ta.send_packet(ipv4_packet(A_IP, B_IP, b"direct now"), clock.now())
    run(clock, sides, 1.0)
    got = []
    while (e := tb.poll_event()) is not None:
        if isinstance(e, PacketsReceived):
            got.extend(e.packets)
    # the packet staged while there was no endpoint goes out once there is one
    assert got == [ipv4_packet(A_IP, B_IP, b"early"), ipv4_packet(A_IP, B_IP, b"direct now")]
    stats = ta.statistics()["traversal"]
    assert isinstance(stats, dict) and stats["direct"] == {
        public_key(key("b")).hex(): "198.18.2.2:51820"
    }


def test_demultiplexing_sends_unknown_bytes_to_wireguard_which_counts_them() -> None:
    clock, ta, _ = setup()
    ta.handle_datagram(b"\x09garbage-bytes-here", B, clock.now())
    ta.handle_datagram(b"\xf5UPB" + b"\0" * 80, B, clock.now())  # probe magic, unknown key
    drops = ta.device.statistics()["drops"]
    assert isinstance(drops, dict) and sum(drops.values()) == 1
    assert ta.agent.counters["drop_unknown_peer"] == 1
    assert is_wireguard(b"\x04\0\0\0" + b"x" * 28) and not is_wireguard(b"\x01\x01\0\0")


def test_no_stun_server_answers_means_udp_blocked() -> None:
    clock, ta, _ = setup()
    ta.gather(STUN, clock.now())
    while ta.poll_all_transmit() is not None:
        pass  # lost
    for _ in range(20):
        deadline = ta.poll_timeout()
        if deadline is None:
            break
        clock.advance(max(0.0, deadline.at - clock.mono))
        ta.handle_timeout(clock.now())
        while ta.poll_all_transmit() is not None:
            pass
    assert ta.gathered(["198.19.1.2"], 51820).nat == "udp-blocked"
