"""The IO shell of a WireGuard device: a UDP socket, a TUN (or any packet port) and a timer.

The machine (`umbranet.proto.wireguard.Device`) does the protocol; this file only moves
bytes and time. Both descriptors are non-blocking and watched with the loop's `add_reader`;
each wake-up drains up to `batch` packets before flushing, so a burst costs one pass over
the machine's outputs rather than one per packet. Packets the device delivers go to the
packet port; every other event goes to `on_event`, if given.

A socket or TUN error on one packet is counted, never raised into the event loop: a full
send buffer drops a datagram just as a congested link would.

With a `flow_filter` (network mode's policy on every packet), each packet read from the port
is shown to it before sending (so it learns the flows we start) and each packet a peer
delivers must pass it before reaching the port; a drop is counted there under its reason.

Batching on Linux (the benchmark's lever; both fall back silently where the kernel refuses):
- UDP GSO: a run of datagrams to one address, all the same size but the last, leaves in one
  `sendmsg` with UDP_SEGMENT, and the kernel cuts it up (one syscall for up to 64 packets).
- UDP GRO: with UDP_GRO set, one `recvmsg` may return several datagrams from one sender glued
  together, with the segment size in a control message; they are split here.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import sys
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from umbranet.clock import Clock, system_clock
from umbranet.proto.wireguard import Device, Event, PacketReceived
from umbranet.proto.wireguard.flowfilter import FlowFilter

__all__ = ["PacketPort", "WireGuardDriver"]

_MAX_DATAGRAM = 65535
_SOL_UDP = 17
_UDP_SEGMENT = 103
_UDP_GRO = 104
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
# What a kernel or device without segmentation offload answers; GSO is then turned off.
_GSO_UNSUPPORTED = {errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP}


class PacketPort(Protocol):
    """Where IP packets come from and go to: a `Tun`, or an in-memory twin in tests."""

    def fileno(self) -> int: ...

    def read_batch(self, limit: int = 64) -> list[bytes]: ...

    def write(self, packet: bytes) -> bool: ...


class WireGuardDriver:
    """Runs `device` over `sock` (bound, non-blocking UDP) and `port` until closed."""

    def __init__(
        self,
        device: Device,
        sock: socket.socket,
        port: PacketPort,
        *,
        clock: Clock = system_clock,
        on_event: Callable[[Event], None] | None = None,
        batch: int = 64,
        gso: bool = True,
        gro: bool = True,
        flow_filter: FlowFilter | None = None,
    ) -> None:
        self.device = device
        self.flow_filter = flow_filter
        self._sock = sock
        self._port = port
        self._clock = clock
        self._on_event = on_event
        self._batch = batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.counters: Counter[str] = Counter()
        self._gso = gso and hasattr(socket.socket, "sendmsg")
        self._gro = gro
        if gro:
            try:
                sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
            except OSError:
                self._gro = False

    async def __aenter__(self) -> WireGuardDriver:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start watching both descriptors (call from inside the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._on_udp)
        self._loop.add_reader(self._port.fileno(), self._on_packets)
        self._flush()

    def close(self) -> None:
        """Stop watching (the socket and port stay open: their owner closes them)."""
        loop = self._loop
        if loop is None:
            return
        loop.remove_reader(self._sock.fileno())
        loop.remove_reader(self._port.fileno())
        if self._timer is not None:
            self._timer.cancel()
        self._loop = None

    def statistics(self) -> dict[str, object]:
        stats: dict[str, object] = {"io": dict(self.counters), "device": self.device.statistics()}
        if self.flow_filter is not None:
            stats["filter"] = self.flow_filter.statistics()
        return stats

    # -- readiness callbacks -------------------------------------------------------------

    def _on_udp(self) -> None:
        now = self._clock.now()
        handle = self.device.handle_datagram
        for _ in range(self._batch):
            try:
                data, ancdata, _, addr = self._sock.recvmsg(_MAX_DATAGRAM, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # e.g. ECONNREFUSED from an ICMP error for an earlier send: keep reading
                self.counters["udp_recv_errors"] += 1
                continue
            source = (addr[0], addr[1])
            segment = _gro_segment_size(ancdata)
            if segment and len(data) > segment:
                self.counters["udp_gro_batches"] += 1
                for start in range(0, len(data), segment):
                    self.counters["udp_datagrams_in"] += 1
                    handle(data[start : start + segment], source, now)
            else:
                self.counters["udp_datagrams_in"] += 1
                handle(data, source, now)
        self._flush()

    def _on_packets(self) -> None:
        now = self._clock.now()
        packets = self._port.read_batch(self._batch)
        self.counters["tun_packets_in"] += len(packets)
        flows = self.flow_filter
        for packet in packets:
            if flows is not None:
                flows.handle_outbound(packet, now.mono)
            self.device.send_packet(packet, now)
        self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.device.handle_timeout(self._clock.now())
        self._flush()

    # -- outputs -------------------------------------------------------------------------

    def _flush(self) -> None:
        device = self.device
        outgoing: list[tuple[bytes, tuple[str, int]]] = []
        while (out := device.poll_transmit()) is not None:
            outgoing.append(out)
        if outgoing:
            self._send_all(outgoing)
        flows = self.flow_filter
        mono = self._clock.now().mono if flows is not None else 0.0
        while (event := device.poll_event()) is not None:
            if isinstance(event, PacketReceived):
                if flows is not None and flows.check_inbound(event.peer, event.packet, mono):
                    self.counters["filter_drops"] += 1
                elif self._port.write(event.packet):
                    self.counters["tun_packets_out"] += 1
                else:
                    self.counters["tun_write_drops"] += 1
            elif self._on_event is not None:
                self._on_event(event)
        self._arm_timer()

    def _send_all(self, outgoing: list[tuple[bytes, tuple[str, int]]]) -> None:
        i, n = 0, len(outgoing)
        while i < n:
            first, addr = outgoing[i]
            size = len(first)
            j, total = i + 1, size
            if self._gso:
                while j < n and j - i < _GSO_MAX_SEGMENTS and outgoing[j][1] == addr:
                    length = len(outgoing[j][0])
                    if length > size or total + length > _GSO_MAX_BYTES:
                        break
                    total += length
                    j += 1
                    if length < size:
                        break  # only the last segment may be shorter
            if j - i > 1 and self._send_segmented(outgoing[i:j], size, addr):
                i = j
                continue
            for data, target in outgoing[i:j]:
                self._send_one(data, target)
            i = j

    def _send_segmented(
        self, run: list[tuple[bytes, tuple[str, int]]], size: int, addr: tuple[str, int]
    ) -> bool:
        """One sendmsg for the run; False (GSO now off) if the kernel refuses UDP_SEGMENT."""
        try:
            self._sock.sendmsg(
                [b"".join(data for data, _ in run)],
                [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", size))],
                0,
                addr,
            )
        except OSError as exc:
            if exc.errno in _GSO_UNSUPPORTED:
                self._gso = False
                self.counters["udp_gso_disabled"] += 1
                return False
            self.counters["udp_send_errors"] += len(run)
            return True
        self.counters["udp_gso_batches"] += 1
        self.counters["udp_datagrams_out"] += len(run)
        return True

    def _send_one(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._sock.sendto(data, addr)
            self.counters["udp_datagrams_out"] += 1
        except OSError:
            self.counters["udp_send_errors"] += 1

    def _arm_timer(self) -> None:
        loop = self._loop
        if loop is None:
            return
        deadline = self.device.poll_timeout()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_at = None
            return
        if self._timer is not None and self._timer_at == deadline.at:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, deadline.at - self._clock.now().mono)
        self._timer = loop.call_later(delay, self._on_timer)
        self._timer_at = deadline.at


def _gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The segment size the kernel reports for a GRO-coalesced read (0 if not coalesced)."""
    for level, kind, value in ancdata:
        if level == _SOL_UDP and kind == _UDP_GRO and value:
            width = 4 if len(value) >= 4 else 2
            return int.from_bytes(value[:width], sys.byteorder)
    return 0
