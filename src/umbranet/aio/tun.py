"""A Linux TUN device: IP packets in and out of the kernel through a file descriptor.

Network mode's adapter (`umbra0`). Opened with IFF_TUN | IFF_NO_PI, so each read is exactly
one IP packet with no packet-information prefix, and each write hands one packet to the
kernel. The descriptor is non-blocking, for an event loop's `add_reader`; `read_batch`
drains up to a limit per wake-up so one readiness callback carries many packets (the
benchmark's lever: fewer loop iterations per packet).

Addresses and routes are not set here: that is `ip`'s (or the agent's planner's) business,
so this file stays a thin, testable shell. Needs CAP_NET_ADMIN (root) and /dev/net/tun.
"""

from __future__ import annotations

import fcntl
import os
import struct

__all__ = ["IFF_NO_PI", "IFF_TUN", "TUNSETIFF", "Tun"]

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
_IFNAMSIZ = 16
_MAX_PACKET = 65535


class Tun:
    """An open TUN interface. `name` is what the kernel called it (the request may use %d)."""

    __slots__ = ("_fd", "name")

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self.name = name

    @classmethod
    def open(cls, name: str = "umbra%d", path: str = "/dev/net/tun") -> Tun:
        """Create (or attach to) the TUN interface `name`; OSError if not permitted."""
        encoded = name.encode()
        if not encoded or len(encoded) >= _IFNAMSIZ:
            raise ValueError(f"interface name must be 1-{_IFNAMSIZ - 1} bytes")
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            ifreq = struct.pack(f"{_IFNAMSIZ}sH22x", encoded, IFF_TUN | IFF_NO_PI)
            result = fcntl.ioctl(fd, TUNSETIFF, ifreq)
        except BaseException:
            os.close(fd)
            raise
        actual = result[:_IFNAMSIZ].split(b"\0", 1)[0].decode()
        return cls(fd, actual)

    def fileno(self) -> int:
        return self._fd

    def read(self) -> bytes | None:
        """One packet, or None if none is waiting."""
        try:
            return os.read(self._fd, _MAX_PACKET)
        except BlockingIOError:
            return None

    def read_batch(self, limit: int = 64) -> list[bytes]:
        """Up to `limit` waiting packets."""
        packets: list[bytes] = []
        for _ in range(limit):
            packet = self.read()
            if packet is None:
                break
            packets.append(packet)
        return packets

    def write(self, packet: bytes) -> bool:
        """Hand a packet to the kernel; False if its queue is full (the packet is dropped,
        as a full NIC queue would drop it: IP's upper layers retransmit)."""
        try:
            os.write(self._fd, packet)
        except BlockingIOError:
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
