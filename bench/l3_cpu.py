"""CPU per packet of network mode's Python data path, in one process, without the kernel.

The timed `umbranet-l3` row mixes our cost with iperf3's, the kernel's and the neighbours' on
a shared 2-core machine; this measures only what our code spends per 1420-byte packet, the
figure the throughput target depends on. Two drivers run exactly as `umbra up --tun` builds
them (device inside the NAT-traversal facade, a path set per peer, the stateful filter, TUN
offload framing), but over stand-ins for the TUN and the UDP socket:

- send side: the TUN hands over 64 KiB TCP super-packets (virtio-net header, GSO_TCPV4,
  partial checksum), as the kernel does with TSO; the socket takes GSO batches;
- receive side: the socket returns those batches as UDP GRO reads; the TUN takes the
  coalesced GSO writes.

Usage: `PYTHONPATH=<tree>/src python bench/l3_cpu.py [--packets N] [--profile send|recv]`.
Prints process CPU microseconds per packet for each side (best of 5 rounds).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any, cast

from umbranet.aio import tun_offload
from umbranet.aio.wg_driver import WireGuardDriver
from umbranet.clock import system_clock
from umbranet.proto.paths import Path, PathKind
from umbranet.proto.traversal import Traversal
from umbranet.proto.wireguard import Device
from umbranet.proto.wireguard.crypto import public_key
from umbranet.proto.wireguard.flowfilter import FlowFilter, Grant

A_IP, B_IP = "100.64.0.1", "100.64.0.2"
A_UDP, B_UDP = ("198.18.0.1", 51820), ("198.18.0.2", 51820)
MSS = 1380  # TUN MTU 1420 - 40
_UDP_GRO = 104


def _ip(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def super_packet(seq: int, payload: int = 47 * MSS) -> bytes:
    """A TSO read: virtio-net header + IPv4/TCP header + `payload` bytes, checksum partial."""
    total = 40 + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0, _ip(A_IP), _ip(B_IP))
    ip = ip[:10] + tun_offload.checksum(ip).to_bytes(2, "big") + ip[12:]
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, 5 << 4, 0x18, 512, 0, 0)
    vnet = tun_offload.VNET_HDR.pack(tun_offload.NEEDS_CSUM, tun_offload.GSO_TCPV4, 40, MSS, 20, 16)
    return vnet + ip + tcp + bytes(range(256)) * (payload // 256) + bytes(payload % 256)


class FakeTun:
    def __init__(self, reads: list[bytes]) -> None:
        self.reads = reads
        self.counters: Counter[str] = Counter()
        self.written = 0

    def fileno(self) -> int:
        return -1

    def read_batch(self, limit: int = 64) -> list[bytes]:
        packets: list[bytes] = []
        while len(packets) < limit and self.reads:
            packets.extend(tun_offload.unpack(self.reads.pop(), self.counters))
        return packets

    def write(self, packet: bytes) -> bool:
        self.written += 1
        return True

    def write_batch(self, packets: list[bytes]) -> tuple[int, int]:
        frames = tun_offload.coalesce(packets, self.counters)
        self.written += len(frames)
        return len(packets), 0


class FakeSock:
    family = socket.AF_INET

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, int]] = []  # (blob, segment size)
        self.inbox: list[tuple[bytes, int]] = []

    def setsockopt(self, *args: object) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def setblocking(self, flag: bool) -> None:
        pass

    def sendmsg(self, buffers: list[bytes], anc: list[Any], flags: int, addr: Any) -> int:
        data = b"".join(buffers)
        self.sent.append((data, int.from_bytes(anc[0][2], sys.byteorder) if anc else len(data)))
        return len(data)

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sent.append((bytes(data), len(data)))
        return len(data)

    def recvmsg(self, size: int, anc: int) -> tuple[bytes, list[Any], int, Any]:
        if not self.inbox:
            raise BlockingIOError
        data, segment = self.inbox.pop()
        cmsg = [(17, _UDP_GRO, segment.to_bytes(4, sys.byteorder))] if segment < len(data) else []
        return data, cmsg, 0, A_UDP


def build() -> tuple[WireGuardDriver, WireGuardDriver, FakeTun, FakeSock, FakeSock, FakeTun]:
    ka, kb = bytes(range(32)), bytes(range(1, 33))
    dev_a, dev_b = Device(ka), Device(kb)
    dev_a.add_peer(public_key(kb), endpoint=B_UDP, allowed_ips=[f"{B_IP}/32"])
    dev_b.add_peer(public_key(ka), endpoint=A_UDP, allowed_ips=[f"{A_IP}/32"])
    tun_a, tun_b = FakeTun([]), FakeTun([])
    sock_a, sock_b = FakeSock(), FakeSock()
    flows_a, flows_b = FlowFilter([A_IP]), FlowFilter([B_IP])
    flows_b.set_grants({public_key(ka): Grant(ports=frozenset({(6, 5201)}))})
    drivers = []
    for dev, key, sock, tun, flows, peer_key, peer_udp in (
        (dev_a, ka, sock_a, tun_a, flows_a, public_key(kb), B_UDP),
        (dev_b, kb, sock_b, tun_b, flows_b, public_key(ka), A_UDP),
    ):
        machine = Traversal(dev, key, public_key(key), random_bytes=bytes)
        drv = WireGuardDriver(
            cast(Device, machine), cast(socket.socket, sock), tun, flow_filter=flows
        )
        drv.set_paths(peer_key, [Path(PathKind.DIRECT, peer_udp)])
        drivers.append(drv)
    drv_a, drv_b = drivers
    # handshake: A initiates, B answers, A's keepalive confirms
    now = system_clock.now()
    dev_a.initiate(public_key(kb), now)
    for _ in range(4):
        while (out := dev_a.poll_transmit()) is not None:
            dev_b.handle_datagram(out[0], A_UDP, now)
        while (out := dev_b.poll_transmit()) is not None:
            dev_a.handle_datagram(out[0], B_UDP, now)
    while dev_a.poll_event() or dev_b.poll_event():
        pass
    return drv_a, drv_b, tun_a, sock_a, sock_b, tun_b


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--profile", choices=["send", "recv"], default=None)
    args = parser.parse_args()
    drv_a, drv_b, tun_a, sock_a, sock_b, tun_b = build()
    reads = max(1, args.packets // 47)
    best = {"send": 1e9, "recv": 1e9}
    for _ in range(5):
        tun_a.reads = [super_packet(1 + i * 47 * MSS) for i in range(reads)][::-1]
        sock_a.sent.clear()
        prof = cProfile.Profile() if args.profile == "send" else None
        t0 = time.process_time()
        if prof:
            prof.enable()
        while tun_a.reads:
            drv_a._on_packets()
        if prof:
            prof.disable()
        t1 = time.process_time()
        sent = sum(-(-len(d) // s) for d, s in sock_a.sent)
        best["send"] = min(best["send"], (t1 - t0) / max(1, sent) * 1e6)
        sock_b.inbox = list(sock_a.sent)[::-1]
        before = tun_b.counters.copy()
        prof2 = cProfile.Profile() if args.profile == "recv" else None
        t0 = time.process_time()
        if prof2:
            prof2.enable()
        while sock_b.inbox:
            drv_b._on_udp()
        if prof2:
            prof2.disable()
        t1 = time.process_time()
        best["recv"] = min(best["recv"], (t1 - t0) / max(1, sent) * 1e6)
        for p in (prof, prof2):
            if p is not None:
                pstats.Stats(p).sort_stats("tottime").print_stats(25)
                args.profile = None
    delivered = drv_b.counters["tun_packets_out"]
    print(
        f"packets per round {sent}; delivered total {delivered}; "
        f"filter drops {drv_b.counters['filter_drops']}; device drops "
        f"{drv_b.device.statistics()['drops']}; gro writes {tun_b.counters - before}"
    )
    print(f"send CPU us/packet {best['send']:.2f}  recv CPU us/packet {best['recv']:.2f}")


if __name__ == "__main__":
    main()
