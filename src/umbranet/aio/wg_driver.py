"""The IO shell of a WireGuard device: a UDP socket, a TUN (or any packet port) and a timer.

The machine (`umbranet.proto.wireguard.Device`) does the protocol; this file only moves
bytes and time. Both descriptors are non-blocking and watched with the loop's `add_reader`;
each wake-up drains up to `batch` packets before flushing, so a burst costs one pass over
the machine's outputs rather than one per packet. Packets the device delivers go to the
packet port; every other event goes to `on_event`, if given.

A socket or TUN error on one packet is counted, never raised into the event loop: a full
send buffer drops a datagram just as a congested link would.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from umbranet.clock import Clock, system_clock
from umbranet.proto.wireguard import Device, Event, PacketReceived

__all__ = ["PacketPort", "WireGuardDriver"]

_MAX_DATAGRAM = 65535


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
    ) -> None:
        self.device = device
        self._sock = sock
        self._port = port
        self._clock = clock
        self._on_event = on_event
        self._batch = batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.counters: Counter[str] = Counter()

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
        return {"io": dict(self.counters), "device": self.device.statistics()}

    # -- readiness callbacks -------------------------------------------------------------

    def _on_udp(self) -> None:
        now = self._clock.now()
        handle = self.device.handle_datagram
        for _ in range(self._batch):
            try:
                data, addr = self._sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # e.g. ECONNREFUSED from an ICMP error for an earlier send: keep reading
                self.counters["udp_recv_errors"] += 1
                continue
            self.counters["udp_datagrams_in"] += 1
            handle(data, (addr[0], addr[1]), now)
        self._flush()

    def _on_packets(self) -> None:
        now = self._clock.now()
        packets = self._port.read_batch(self._batch)
        self.counters["tun_packets_in"] += len(packets)
        for packet in packets:
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
        sendto = self._sock.sendto
        while (out := device.poll_transmit()) is not None:
            try:
                sendto(out[0], out[1])
                self.counters["udp_datagrams_out"] += 1
            except OSError:
                self.counters["udp_send_errors"] += 1
        while (event := device.poll_event()) is not None:
            if isinstance(event, PacketReceived):
                if self._port.write(event.packet):
                    self.counters["tun_packets_out"] += 1
                else:
                    self.counters["tun_write_drops"] += 1
            elif self._on_event is not None:
                self._on_event(event)
        self._arm_timer()

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
