"""The driver's paths over real loopback UDP: start relayed, upgrade to direct, fall back.

A and B each run a `WireGuardDriver`; an in-memory relay stands in for the router link, and
the direct path goes through a small UDP forwarder the test can cut (the "NAT" between
them), so both sides see the same direct address. Packets arrive on each path, those sent
into the cut direct path until the fallback are lost (as on a real network), and the
WireGuard session is never replaced: one handshake for the whole run.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from tests.unit.test_wireguard_driver import SocketPort
from tests.wireguard_harness import A_IP, B_IP, ipv4_packet, key
from umbranet.aio.wg_driver import WireGuardDriver
from umbranet.proto.paths import Path, PathKind, relay_address
from umbranet.proto.wireguard import Device, Event, HandshakeCompleted
from umbranet.proto.wireguard.crypto import public_key

KEY_A, KEY_B = public_key(key("a")), public_key(key("b"))


class Relay:
    """Both ends of an in-memory router relay, delivering on the next loop turn."""

    def __init__(self) -> None:
        self.drivers: dict[bytes, WireGuardDriver] = {}
        self.carried = 0
        self.seen: list[bytes] = []  # every datagram the "router" carried

    def end(self, me: bytes) -> RelayEnd:
        return RelayEnd(self, me)


class RelayEnd:
    def __init__(self, relay: Relay, me: bytes) -> None:
        self.relay, self.me = relay, me

    def send_relayed(self, peer: bytes, datagram: bytes) -> bool:
        target = self.relay.drivers.get(peer)
        if target is None:
            return False
        self.relay.carried += 1
        self.relay.seen.append(datagram)
        asyncio.get_running_loop().call_soon(target.handle_relayed, self.me, [datagram])
        return True

    def send_relayed_many(self, peer: bytes, datagrams: list[bytes]) -> int:
        target = self.relay.drivers.get(peer)
        if target is None:
            return 0
        self.relay.carried += len(datagrams)
        self.relay.seen.extend(datagrams)
        asyncio.get_running_loop().call_soon(target.handle_relayed, self.me, list(datagrams))
        return len(datagrams)


class Forwarder(asyncio.DatagramProtocol):
    """One UDP socket between A and B: what one sends to it reaches the other, unless cut."""

    def __init__(self, a: tuple[str, int], b: tuple[str, int]) -> None:
        self.a, self.b = a, b
        self.cut = False
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.cut or self.transport is None:
            return
        self.transport.sendto(data, self.b if addr == self.a else self.a)


async def _ping(src: SocketPort, dst: SocketPort, i: int) -> None:
    src.kernel.send(ipv4_packet(A_IP, B_IP, f"ping {i}".encode()))
    loop = asyncio.get_running_loop()
    got = await asyncio.wait_for(loop.sock_recv(dst.kernel, 65535), 5.0)
    assert got == ipv4_packet(A_IP, B_IP, f"ping {i}".encode())


def _drain(port: SocketPort) -> None:
    with contextlib.suppress(BlockingIOError):
        while True:
            port.kernel.recv(65535)


async def _scenario() -> None:
    loop = asyncio.get_running_loop()
    udp_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_a.bind(("127.0.0.1", 0))
    udp_b.bind(("127.0.0.1", 0))
    forwarder = Forwarder(udp_a.getsockname(), udp_b.getsockname())
    transport, _ = await loop.create_datagram_endpoint(
        lambda: forwarder, local_addr=("127.0.0.1", 0)
    )
    nat = transport.get_extra_info("sockname")
    a, b = Device(key("a")), Device(key("b"))
    # Each starts knowing only the relay; the direct path is a candidate to prove.
    a.add_peer(KEY_B, endpoint=relay_address(KEY_B), allowed_ips=[f"{B_IP}/32"])
    b.add_peer(KEY_A, endpoint=relay_address(KEY_A), allowed_ips=[f"{A_IP}/32"])
    relay = Relay()
    port_a, port_b = SocketPort(), SocketPort()
    events: list[Event] = []
    options = {"gso": False, "gro": False, "path_deadline": 1.5, "probe_interval": 0.3}
    try:
        async with (
            WireGuardDriver(
                a, udp_a, port_a, relay=relay.end(KEY_A), on_event=events.append, **options
            ) as da,  # type: ignore[arg-type]
            WireGuardDriver(b, udp_b, port_b, relay=relay.end(KEY_B), **options) as db,  # type: ignore[arg-type]
        ):
            relay.drivers = {KEY_A: da, KEY_B: db}
            direct = Path(PathKind.DIRECT, (nat[0], nat[1]))
            forwarder.cut = True
            da.set_paths(KEY_B, [direct, Path(PathKind.RELAY, relay_address(KEY_B))])
            db.set_paths(KEY_A, [direct, Path(PathKind.RELAY, relay_address(KEY_A))])
            assert da.current_path(KEY_B).kind is PathKind.RELAY  # type: ignore[union-attr]
            # traffic flows at once, relayed
            i = 0
            await _ping(port_a, port_b, i)
            assert relay.carried > 0
            # the direct path opens: both sides prove and move to it
            forwarder.cut = False

            def both_direct() -> bool:
                pa, pb = da.current_path(KEY_B), db.current_path(KEY_A)
                return pa == direct and pb == direct

            while not both_direct():
                i += 1
                await _ping(port_a, port_b, i)
                await asyncio.sleep(0.05)
                assert i < 200, "never upgraded"
            carried = relay.carried
            for _ in range(5):
                i += 1
                await _ping(port_a, port_b, i)
            assert relay.carried == carried  # data now goes direct
            # the direct path dies: back to the relay within the deadline, no packet lost
            forwarder.cut = True
            lost_at = loop.time()
            while da.current_path(KEY_B) != Path(PathKind.RELAY, relay_address(KEY_B)):
                # sent into the dead path until the fallback: lost, as on a real network
                port_a.kernel.send(ipv4_packet(A_IP, B_IP, b"into the void"))
                await asyncio.sleep(0.05)
                assert loop.time() - lost_at < 8.0, "never fell back"
            _drain(port_b)
            for _ in range(5):
                i += 1
                await _ping(port_a, port_b, i)
            stats = da.statistics()
            assert isinstance(stats["io"], dict) and stats["io"]["path_changes"] >= 3
    finally:
        transport.close()
        udp_a.close()
        udp_b.close()
        port_a.close()
        port_b.close()
    # the relay carried WireGuard ciphertext only: no packet's plaintext in any datagram
    assert relay.seen and not any(b"ping " in d for d in relay.seen)
    # one handshake: the session survived both path changes
    assert events.count(HandshakeCompleted(KEY_B, True)) == 1


def test_starts_relayed_upgrades_to_direct_and_falls_back() -> None:
    asyncio.run(_scenario())
