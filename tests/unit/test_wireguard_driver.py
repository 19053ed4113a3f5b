"""The UDP + packet-port shell around the WireGuard machine, over real loopback sockets.

The packet port is an in-memory twin of the TUN: one end of a datagram socketpair, so the
driver sees a real descriptor with one packet per read, and the test holds the other end as
"the kernel". Needs no root.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.wireguard_harness import A_IP, B_IP, ipv4_packet, key
from umbranet.aio.wg_driver import WireGuardDriver
from umbranet.proto.wireguard import Device, Event, HandshakeCompleted
from umbranet.proto.wireguard.crypto import public_key


class SocketPort:
    """A TUN twin: packets written by the driver appear at `kernel`, and vice versa."""

    def __init__(self) -> None:
        self.kernel, self._mine = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._mine.setblocking(False)
        self.kernel.setblocking(False)

    def fileno(self) -> int:
        return self._mine.fileno()

    def read_batch(self, limit: int = 64) -> list[bytes]:
        out: list[bytes] = []
        for _ in range(limit):
            try:
                out.append(self._mine.recv(65535))
            except BlockingIOError:
                break
        return out

    def write(self, packet: bytes) -> bool:
        try:
            self._mine.send(packet)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        self.kernel.close()
        self._mine.close()


async def _recv(sock: socket.socket, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)


async def _scenario(batching: bool) -> tuple[list[bytes], list[Event], dict[str, object]]:
    udp_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_a.bind(("127.0.0.1", 0))
    udp_b.bind(("127.0.0.1", 0))
    a = Device(key("a"))
    b = Device(key("b"))
    a.add_peer(public_key(key("b")), endpoint=udp_b.getsockname(), allowed_ips=[f"{B_IP}/32"])
    b.add_peer(public_key(key("a")), allowed_ips=[f"{A_IP}/32"])  # learns A's endpoint
    port_a, port_b = SocketPort(), SocketPort()
    events: list[Event] = []
    try:
        async with (
            WireGuardDriver(
                a, udp_a, port_a, on_event=events.append, gso=batching, gro=batching
            ) as driver_a,
            WireGuardDriver(b, udp_b, port_b, gso=batching, gro=batching) as driver_b,
        ):
            got: list[bytes] = []
            for i in range(20):
                port_a.kernel.send(ipv4_packet(A_IP, B_IP, f"out {i}".encode()))
            for _ in range(20):
                got.append(await _recv(port_b.kernel))
            port_b.kernel.send(ipv4_packet(B_IP, A_IP, b"reply"))
            got.append(await _recv(port_a.kernel))
            stats = {"a": driver_a.statistics()["io"], "b": driver_b.statistics()["io"]}
    finally:
        udp_a.close()
        udp_b.close()
        port_a.close()
        port_b.close()
    return got, events, stats


@pytest.mark.parametrize("batching", [True, False], ids=["gso+gro", "plain"])
def test_packets_cross_real_udp_sockets_through_the_driver(batching: bool) -> None:
    got, events, stats = asyncio.run(_scenario(batching))
    assert got[:20] == [ipv4_packet(A_IP, B_IP, f"out {i}".encode()) for i in range(20)]
    assert got[20] == ipv4_packet(B_IP, A_IP, b"reply")
    assert events == [HandshakeCompleted(public_key(key("b")), True)]
    a, b = stats["a"], stats["b"]
    assert isinstance(a, dict) and isinstance(b, dict)
    assert a["tun_packets_in"] == 20 and a["tun_packets_out"] == 1
    assert b["tun_packets_out"] == 20
    assert a.get("udp_send_errors", 0) == 0 and b.get("udp_recv_errors", 0) == 0
    if batching:
        # The 20 staged packets leave in one segmented send (or GSO was refused, and said so).
        assert a.get("udp_gso_batches", 0) >= 1 or a.get("udp_gso_disabled", 0) == 1
    else:
        assert "udp_gso_batches" not in a and "udp_gro_batches" not in b
