"""Three devices in a full mesh, in virtual time: routing by allowed IPs among several peers,
and no peer can speak with another peer's addresses."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.wireguard_harness import ipv4_packet, key, seeded
from umbranet.proto.wireguard import Address, Device, PacketsReceived
from umbranet.proto.wireguard.crypto import public_key
from umbranet.testing.clock import FakeClock

NAMES = ("a", "b", "c")
ADDR: dict[str, Address] = {n: (f"198.18.1.{i + 1}", 51820) for i, n in enumerate(NAMES)}
IP = {n: f"100.64.1.{i + 1}" for i, n in enumerate(NAMES)}


def _mesh() -> tuple[FakeClock, dict[str, Device]]:
    clock = FakeClock(start=datetime(2026, 12, 4, 12, 0, tzinfo=UTC))
    devices = {n: Device(key(n), random_bytes=seeded(i)) for i, n in enumerate(NAMES)}
    for name, device in devices.items():
        for other in NAMES:
            if other != name:
                device.add_peer(
                    public_key(key(other)), endpoint=ADDR[other], allowed_ips=[f"{IP[other]}/32"]
                )
    return clock, devices


def _pump(clock: FakeClock, devices: dict[str, Device]) -> dict[str, list[tuple[bytes, bytes]]]:
    by_addr = {ADDR[n]: d for n, d in devices.items()}
    got: dict[str, list[tuple[bytes, bytes]]] = {n: [] for n in NAMES}
    for _ in range(1000):
        moved = False
        for name, device in devices.items():
            while (out := device.poll_transmit()) is not None:
                moved = True
                by_addr[out[1]].handle_datagram(out[0], ADDR[name], clock.now())
        if not moved:
            break
    for name, device in devices.items():
        while (event := device.poll_event()) is not None:
            if isinstance(event, PacketsReceived):
                got[name].extend((event.peer, packet) for packet in event.packets)
    return got


def test_every_pair_talks_and_each_packet_reaches_only_its_destination() -> None:
    clock, devices = _mesh()
    for src in NAMES:
        for dst in NAMES:
            if src != dst:
                devices[src].send_packet(ipv4_packet(IP[src], IP[dst], src.encode()), clock.now())
    got = _pump(clock, devices)
    for dst in NAMES:
        senders = sorted(packet[-1:].decode() for _, packet in got[dst])
        assert senders == sorted(n for n in NAMES if n != dst)
        for peer, packet in got[dst]:
            sender = packet[-1:].decode()
            assert peer == public_key(key(sender))


def test_a_peer_cannot_use_another_peers_address() -> None:
    clock, devices = _mesh()
    # b, authenticated as b, claims c's address towards a: a must refuse it.
    devices["b"].send_to(public_key(key("a")), ipv4_packet(IP["c"], IP["a"], b"x"), clock.now())
    got = _pump(clock, devices)
    assert got["a"] == []
    drops = devices["a"].statistics()["drops"]
    assert drops == {"source_not_allowed": 1}
