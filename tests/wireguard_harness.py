"""Two WireGuard devices joined by an in-memory link, in virtual time, for unit tests.

`Pair.pump()` moves every queued datagram to the device it is addressed to until nothing is
left (bounded); `Pair.run(seconds)` advances the fake clock from deadline to deadline,
pumping after each timeout, so timers fire exactly when the machines ask. `wire` records
every datagram that crossed, for tests that replay or inspect them; `drop` filters what is
delivered (a lossy or cut link).
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from umbranet.proto.wireguard import Address, Device, DeviceConfig, Event, PacketsReceived
from umbranet.proto.wireguard.crypto import public_key
from umbranet.testing.clock import FakeClock

A_ADDR: Address = ("198.18.0.1", 51820)
B_ADDR: Address = ("198.18.0.2", 51820)
A_IP = "100.64.0.1"
B_IP = "100.64.0.2"


def key(label: str) -> bytes:
    """A fixed private key per label (tests must not depend on the OS's randomness)."""
    return hashlib.sha256(label.encode()).digest()


def ipv4_packet(src: str, dst: str, payload: bytes, proto: int = 17) -> bytes:
    """A minimal IPv4 packet (the checksum is not checked by WireGuard, so it is left zero)."""
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        0,
        0,
        64,
        proto,
        0,
        bytes(int(x) for x in src.split(".")),
        bytes(int(x) for x in dst.split(".")),
    )
    return header + payload


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


@dataclass
class Pair:
    clock: FakeClock
    a: Device
    b: Device
    wire: list[tuple[bytes, Address, Address]] = field(default_factory=list)
    drop: Callable[[bytes, Address, Address], bool] = lambda data, src, dst: False
    events: dict[Address, list[Event]] = field(default_factory=dict)

    def devices(self) -> dict[Address, Device]:
        return {A_ADDR: self.a, B_ADDR: self.b}

    def pump(self, limit: int = 10_000) -> int:
        """Deliver until quiet; the number delivered."""
        moved = 0
        devices = self.devices()
        for _ in range(limit):
            progressed = False
            for src, device in devices.items():
                out = device.poll_transmit()
                if out is None:
                    continue
                progressed = True
                data, dst = out
                self.wire.append((data, src, dst))
                target = devices.get(dst)
                if target is not None and not self.drop(data, src, dst):
                    target.handle_datagram(data, src, self.clock.now())
                    moved += 1
            for addr, device in devices.items():
                while (event := device.poll_event()) is not None:
                    self.events.setdefault(addr, []).append(event)
            if not progressed:
                return moved
        raise AssertionError("the link never went quiet")

    def run(self, seconds: float) -> None:
        """Advance virtual time by `seconds`, firing every timer on the way."""
        end = self.clock.mono + seconds
        for _ in range(100_000):
            self.pump()
            deadlines = [d for d in (self.a.poll_timeout(), self.b.poll_timeout()) if d]
            next_at = min((d.at for d in deadlines), default=None)
            if next_at is None or next_at > end:
                self.clock.advance(end - self.clock.mono)
                self.pump()
                return
            if next_at > self.clock.mono:
                self.clock.advance(next_at - self.clock.mono)
            for device in (self.a, self.b):
                device.handle_timeout(self.clock.now())
        raise AssertionError("timers never settled")

    def received(self, addr: Address) -> list[bytes]:
        events = self.events.get(addr, [])
        return [p for e in events if isinstance(e, PacketsReceived) for p in e.packets]

    def take_events(self, addr: Address) -> list[Event]:
        return self.events.pop(addr, [])


def make_pair(
    seed: int = 1,
    *,
    keepalive: float | None = None,
    config: DeviceConfig | None = None,
    start: datetime | None = None,
) -> Pair:
    clock = FakeClock(start=start or datetime(2026, 12, 4, 12, 0, tzinfo=UTC))
    a = Device(key("a"), random_bytes=seeded(seed), config=config)
    b = Device(key("b"), random_bytes=seeded(seed + 1000), config=config)
    a.add_peer(
        public_key(key("b")),
        endpoint=B_ADDR,
        allowed_ips=[f"{B_IP}/32"],
        persistent_keepalive=keepalive,
    )
    b.add_peer(public_key(key("a")), endpoint=A_ADDR, allowed_ips=[f"{A_IP}/32"])
    return Pair(clock, a, b)
