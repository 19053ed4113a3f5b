"""CPU per request/response of network mode's Python data path, one small packet each way.

`bench/l3_cpu.py` measures bulk transfer (TSO super-packets, GSO batches); a round trip is the
other extreme: every packet is alone in its TUN read, its UDP datagram and its loop wake-up, so
nothing is shared across packets and the per-wake-up glue is the whole cost. This drives the
two `WireGuardDriver`s of `l3_cpu.build()` (a handshaken pair, each with its filter and path
set, as `umbra up --tun` builds them) over the same stand-ins for the TUN and the socket, and
times one round trip: A's TUN read, A's UDP read at B, B's TUN read of the answer, and B's
datagram read at A. The drivers' timers are armed on a real (idle) loop, as in the agent.

Usage: `PYTHONPATH=<tree>/src:<tree> python bench/l3_rr_cpu.py [--rounds N] [--profile]`.
Prints process CPU microseconds per round trip (best of 5).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import struct
import sys
import time
from typing import Any

from bench.l3_cpu import A_IP, A_UDP, B_IP, B_UDP, FakeSock, _ip, build
from umbranet.aio import tun_offload
from umbranet.aio.runtime import new_event_loop


class FromSock(FakeSock):
    """A stand-in socket whose datagrams come from `source`."""

    def __init__(self, source: tuple[str, int]) -> None:
        super().__init__()
        self.source = source

    def recvmsg(self, size: int, anc: int) -> tuple[bytes, list[Any], int, Any]:
        if not self.inbox:
            raise BlockingIOError
        data, _ = self.inbox.pop()
        return data, [], 0, self.source


def small_packet(  # noqa: PLR0917
    src: str, dst: str, sport: int, dport: int, seq: int, size: int = 64, flags: int = 0x18
) -> bytes:
    """A TUN read of one TCP segment with `size` payload bytes (virtio-net header, no GSO)."""
    total = 40 + size
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0, _ip(src), _ip(dst))
    ip = ip[:10] + tun_offload.checksum(ip).to_bytes(2, "big") + ip[12:]
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, flags, 512, 0, 0)
    vnet = tun_offload.VNET_HDR.pack(0, 0, 0, 0, 0, 0)
    return vnet + ip + tcp + b"r" * size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    drv_a, drv_b, tun_a, _, _, tun_b = build()
    loop = new_event_loop()  # uvloop, as the agent runs
    in_a, in_b = FromSock(B_UDP), FromSock(A_UDP)
    for drv, sock in ((drv_a, in_a), (drv_b, in_b)):
        drv._loop = loop  # timers armed as in the agent (the loop never runs them here)
        drv._sock = sock  # type: ignore[assignment]
    request = small_packet(A_IP, B_IP, 40000, 5201, 1)
    answer = small_packet(B_IP, A_IP, 5201, 40000, 1)

    def round_trip(request: bytes = request) -> None:
        tun_a.reads = [request]
        drv_a._on_packets()
        in_b.inbox, in_a.sent = in_a.sent[::-1], []
        drv_b._on_udp()
        tun_b.reads = [answer]
        drv_b._on_packets()
        in_a.inbox, in_b.sent = in_b.sent[::-1], []
        drv_a._on_udp()

    round_trip(small_packet(A_IP, B_IP, 40000, 5201, 0, 0, flags=0x02))  # A starts the flow
    for _ in range(200):  # warm: the flow is known to both filters
        round_trip()
    before = (tun_a.written, tun_b.written)
    best = 1e9
    profile = cProfile.Profile() if args.profile else None
    for _ in range(5):
        t0 = time.process_time()
        if profile is not None:
            profile.enable()
        for _ in range(args.rounds):
            round_trip()
        if profile is not None:
            profile.disable()
        best = min(best, (time.process_time() - t0) / args.rounds * 1e6)
    delivered = (tun_a.written - before[0], tun_b.written - before[1])
    if delivered != (5 * args.rounds, 5 * args.rounds):
        sys.exit(f"not every packet arrived: {delivered}: {drv_a.counters}, {drv_b.counters}")
    if profile is not None:
        pstats.Stats(profile).sort_stats(os.environ.get("SORT", "tottime")).print_stats(
            int(os.environ.get("TOP", "30"))
        )
    print(f"round trip CPU us {best:.2f} (4 driver wake-ups, 2 packets each way sealed/opened)")
    loop.close()


if __name__ == "__main__":
    main()
