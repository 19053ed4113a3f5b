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


async def _dual_stack() -> tuple[list[bytes], tuple[object, object]]:
    """A on one dual-stack socket ([::]:p, IPV6_V6ONLY off) with an IPv4 peer (B on
    127.0.0.1) and an IPv6 peer (C on ::1)."""
    from umbranet.agent.tunmode import _bind_udp

    udp_a = _bind_udp("::", 0)
    assert udp_a.family == socket.AF_INET6
    udp_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_b.bind(("127.0.0.1", 0))
    udp_c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp_c.bind(("::1", 0))
    port_a_num = udp_a.getsockname()[1]
    c_ip = "198.51.100.3"
    a, b, c = Device(key("a")), Device(key("b")), Device(key("c"))
    a.add_peer(public_key(key("b")), endpoint=udp_b.getsockname(), allowed_ips=[f"{B_IP}/32"])
    a.add_peer(public_key(key("c")), endpoint=("::1", udp_c.getsockname()[1]),
               allowed_ips=[f"{c_ip}/32"])  # fmt: skip
    b.add_peer(public_key(key("a")), allowed_ips=[f"{A_IP}/32"])
    c.add_peer(public_key(key("a")), allowed_ips=[f"{A_IP}/32"])
    ports = [SocketPort() for _ in range(3)]
    try:
        async with (
            WireGuardDriver(a, udp_a, ports[0], gso=False, gro=False),
            WireGuardDriver(b, udp_b, ports[1], gso=False, gro=False),
            WireGuardDriver(c, udp_c, ports[2], gso=False, gro=False),
        ):
            ports[0].kernel.send(ipv4_packet(A_IP, B_IP, b"to b over ipv4"))
            ports[0].kernel.send(ipv4_packet(A_IP, c_ip, b"to c over ipv6"))
            got = [await _recv(ports[1].kernel), await _recv(ports[2].kernel)]
            ports[1].kernel.send(ipv4_packet(B_IP, A_IP, b"back from b"))
            got.append(await _recv(ports[0].kernel))
            # what A's machine learned: plain IPv4 for B (not ::ffff:), and ::1 for C
            endpoints = (a.endpoint_of(public_key(key("b"))), a.endpoint_of(public_key(key("c"))))
            seen_by = (b.endpoint_of(public_key(key("a"))), c.endpoint_of(public_key(key("a"))))
    finally:
        for sock in (udp_a, udp_b, udp_c):
            sock.close()
        for port in ports:
            port.close()
    assert seen_by == (("127.0.0.1", port_a_num), ("::1", port_a_num))
    return got, endpoints


def test_one_dual_stack_socket_carries_ipv4_and_ipv6_peers() -> None:
    got, (b_endpoint, c_endpoint) = asyncio.run(_dual_stack())
    assert got[0] == ipv4_packet(A_IP, B_IP, b"to b over ipv4")
    assert got[1] == ipv4_packet(A_IP, "198.51.100.3", b"to c over ipv6")
    assert got[2] == ipv4_packet(B_IP, A_IP, b"back from b")
    assert isinstance(b_endpoint, tuple) and isinstance(c_endpoint, tuple)
    assert b_endpoint[0] == "127.0.0.1" and c_endpoint[0] == "::1"
