"""A Linux TUN device: IP packets in and out of the kernel through a file descriptor.

Network mode's adapter (`umbra0`). Opened with IFF_TUN | IFF_NO_PI, so each read is exactly
one IP packet with no packet-information prefix, and each write hands one packet to the
kernel. The descriptor is non-blocking, for an event loop's `add_reader`; `read_batch`
drains up to a limit per wake-up so one readiness callback carries many packets (the
benchmark's lever: fewer loop iterations per packet).

With `offload=True` the device is opened with a virtio-net header (IFF_VNET_HDR) and asks
for TCP segmentation offload (TUNSETOFFLOAD), so one read may carry a 64 KiB TCP super-packet
that `tun_offload.unpack` cuts into MTU-sized packets, and `write_batch` merges in-order TCP
segments into one GSO write. The kernel may refuse either step (old kernel, a sandbox's
seccomp filter): the device then works as a plain TUN, which is logged once and counted
(`statistics()`), as is a GSO write the kernel rejects (coalescing then stops).

Addresses and routes are not set here: that is `ip`'s (or the agent's planner's) business,
so this file stays a thin, testable shell. Needs CAP_NET_ADMIN (root) and /dev/net/tun.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import sys
from collections import Counter
from collections.abc import Sequence

from umbranet.aio import tun_offload

__all__ = ["IFF_NO_PI", "IFF_TUN", "IFF_VNET_HDR", "TUNSETIFF", "TUNSETOFFLOAD", "Tun"]

log = logging.getLogger("umbranet.agent")

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
_IFNAMSIZ = 16
_MAX_READ = 65535 + tun_offload.VNET_HDR_LEN
# A read this short that carries data is one message of an exchange (a request, an answer, a
# DNS query): stop reading rather than make a read that fails with EAGAIN, a syscall and an
# exception for every small packet; the level-triggered loop calls again if more wait. A
# pure TCP ACK does not stop the reading: a bulk receiver's ACKs queue up and leave batched.
_LONE = 1024


class Tun:
    """An open TUN interface. `name` is what the kernel called it (the request may use %d).

    `vnet` is whether frames carry a virtio-net header; `tso` whether the kernel agreed to
    hand over TCP super-packets; `coalesce` whether writes merge TCP segments."""

    __slots__ = ("_fd", "coalesce", "counters", "name", "tso", "vnet")

    def __init__(self, fd: int, name: str, *, vnet: bool = False, tso: bool = False) -> None:
        self._fd = fd
        self.name = name
        self.vnet = vnet
        self.tso = tso
        self.coalesce = vnet
        self.counters: Counter[str] = Counter()

    @classmethod
    def open(
        cls,
        name: str = "umbra%d",
        path: str = "/dev/net/tun",
        *,
        offload: bool = False,
        tso: bool = True,
    ) -> Tun:
        """Create (or attach to) the TUN interface `name`; OSError if not permitted. With
        `offload`, frames carry a virtio-net header so writes can merge TCP segments, and
        with `tso` too the kernel is asked for TCP super-packets on reads; each falls back
        to plain IO where the kernel refuses it."""
        encoded = name.encode()
        if not encoded or len(encoded) >= _IFNAMSIZ:
            raise ValueError(f"interface name must be 1-{_IFNAMSIZ - 1} bytes")
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        vnet = offered = False
        refused: list[str] = []
        try:
            result = b""
            if offload:
                try:
                    result = _set_iff(fd, encoded, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
                    vnet = True
                except OSError as exc:
                    refused.append(f"IFF_VNET_HDR ({exc.strerror})")
            if not vnet:
                result = _set_iff(fd, encoded, IFF_TUN | IFF_NO_PI)
            if vnet and tso:
                try:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, _OFFLOADS)
                    offered = True
                except OSError as exc:
                    refused.append(f"TUNSETOFFLOAD ({exc.strerror})")
        except BaseException:
            os.close(fd)
            raise
        actual = result[:_IFNAMSIZ].split(b"\0", 1)[0].decode()
        tun = cls(fd, actual, vnet=vnet, tso=offered)
        if refused:
            tun.counters["tun_offload_refused"] += 1
            log.warning(
                "network mode: %s: kernel refused %s; plain TUN IO", actual, ", ".join(refused)
            )
        return tun

    def fileno(self) -> int:
        return self._fd

    def statistics(self) -> dict[str, object]:
        return {"vnet": self.vnet, "tso": self.tso, "coalesce": self.coalesce, **self.counters}

    def read(self) -> bytes | None:
        """One raw read (with its virtio-net header if `vnet`), or None if none is waiting."""
        try:
            return os.read(self._fd, _MAX_READ)
        except BlockingIOError:
            return None

    def read_batch(self, limit: int = 64) -> list[bytes]:
        """IP packets from the waiting reads, until at least `limit` packets or none wait
        (a super-packet is cut into its segments, so one read may give many)."""
        packets: list[bytes] = []
        vnet = self.vnet
        while len(packets) < limit:
            data = self.read()
            if data is None:
                break
            if not vnet:
                packets.append(data)
            else:
                segments = tun_offload.unpack(data, self.counters)
                if len(segments) > 1:
                    self.counters["tun_tso_reads"] += 1
                packets.extend(segments)
            if len(data) < _LONE and _carries_data(data, self.vnet):
                break  # one small message: see `_LONE`
        return packets

    def write(self, packet: bytes) -> bool:
        """Hand a packet to the kernel; False if its queue is full (the packet is dropped,
        as a full NIC queue would drop it: IP's upper layers retransmit)."""
        return self._write(tun_offload.frame(packet) if self.vnet else packet)

    def write_batch(self, packets: Sequence[bytes]) -> tuple[int, int]:
        """Hand packets to the kernel, TCP runs merged where offload allows: (written, dropped)."""
        if not self.coalesce:
            written = sum(1 for packet in packets if self.write(packet))
            return written, len(packets) - written
        written = dropped = 0
        for framed in tun_offload.coalesce(packets, self.counters):
            segments = _segments_in(framed)
            try:
                os.write(self._fd, framed)
                written += segments
            except BlockingIOError:
                dropped += segments
            except OSError as exc:
                if exc.errno != errno.EINVAL or framed[1] == tun_offload.GSO_NONE:
                    dropped += segments
                    self.counters["tun_write_errors"] += 1
                    continue
                # the kernel takes no GSO writes: cut this one up again, stop merging
                self.coalesce = False
                self.counters["tun_gro_disabled"] += 1
                log.warning(
                    "network mode: %s: kernel refused a GSO write; no coalescing", self.name
                )
                for packet in tun_offload.unpack(framed, self.counters):
                    if self.write(packet):
                        written += 1
                    else:
                        dropped += 1
        return written, dropped

    def _write(self, data: bytes) -> bool:
        try:
            os.write(self._fd, data)
        except BlockingIOError:
            return False
        except OSError:
            self.counters["tun_write_errors"] += 1
            return False
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Tun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _set_iff(fd: int, name: bytes, flags: int) -> bytes:
    ifreq = struct.pack(f"{_IFNAMSIZ}sH22x", name, flags)
    return bytes(fcntl.ioctl(fd, TUNSETIFF, ifreq))


def _carries_data(data: bytes, vnet: bool) -> bool:
    """Whether a TUN read is anything but a pure TCP ACK (IPv4 or IPv6, no payload)."""
    at = tun_offload.VNET_HDR_LEN if vnet else 0
    if len(data) < at + 40:
        return True
    version = data[at] >> 4
    if version == 4:
        ihl = (data[at] & 0x0F) * 4
        if data[at + 9] != 6 or len(data) < at + ihl + 13:
            return True
        return len(data) - at > ihl + (data[at + ihl + 12] >> 4) * 4
    if version == 6 and data[at + 6] == 6 and len(data) >= at + 53:
        return len(data) - at > 40 + (data[at + 52] >> 4) * 4
    return True


def _segments_in(framed: bytes) -> int:
    """How many IP packets a coalesced frame carries (for the driver's counters)."""
    if framed[1] == tun_offload.GSO_NONE:
        return 1
    hdr_len = int.from_bytes(framed[2:4], sys.byteorder)
    mss = int.from_bytes(framed[4:6], sys.byteorder)
    payload = len(framed) - tun_offload.VNET_HDR_LEN - hdr_len
    return max(1, -(-payload // max(1, mss)))
