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

Paths (`umbranet.proto.paths`): with `set_paths(peer, paths)` a peer's datagrams go to the
current path of its `PathSet` (direct UDP, a hole-punched candidate, or a router relay)
instead of wherever the machine last heard from it; the WireGuard session is the same on
every path, so switching breaks no flow. A relayed path's address is a pseudo-address
(`relay_address(key)`); datagrams to it go to `relay.send_relayed(key, datagram)` and
datagrams relayed to us come in through `handle_relayed(key, datagrams)`. An authenticated
datagram (the machine's `last_authenticated`) is what the path set takes as proof; an
authenticated datagram from an address no path names (the peer behind a NAT) becomes a
`punched` path to prove (at most `MAX_LEARNED_PATHS` per peer). Path timers run on a tick.

The UDP socket may be dual-stack (AF_INET6 with IPV6_V6ONLY off): IPv4 sources arrive as
``::ffff:a.b.c.d`` and are handed to the machine in plain IPv4 form, and plain IPv4
destinations are mapped back when sending, so endpoints and paths never see two spellings.

Batching on Linux (the benchmark's lever; both fall back silently where the kernel refuses):
- UDP GSO: a run of datagrams to one address, all the same size but the last, leaves in one
  `sendmsg` with UDP_SEGMENT, and the kernel cuts it up (one syscall for up to 64 packets).
- UDP GRO: with UDP_GRO set, one `recvmsg` may return several datagrams from one sender glued
  together, with the segment size in a control message; they are split here.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

from umbranet.clock import Clock, Instant, system_clock
from umbranet.proto.paths import (
    Path,
    PathChanged,
    PathKind,
    PathSet,
    Probe,
    relay_address,
    relay_peer,
)
from umbranet.proto.wireguard import Device, Event, PacketsReceived
from umbranet.proto.wireguard.flowfilter import FlowFilter

__all__ = ["MAX_LEARNED_PATHS", "PacketPort", "RelaySender", "WireGuardDriver"]

log = logging.getLogger("umbranet.agent")

Address = tuple[str, int]
MAX_LEARNED_PATHS = 4
_KEEPALIVE_SIZE = 32  # a transport-data header and tag around nothing
PATH_TICK = 0.5  # seconds between path timer runs (probes, silence deadlines)

_MAX_DATAGRAM = 65535
# A lone datagram this small, not a GRO batch, is interactive traffic: a request, an answer.
# The wake-up handles it and returns without another read that would only fail with EAGAIN
# (a syscall and an exception, a tenth of a small packet's cost here); if more is queued,
# the level-triggered loop calls again at once. Bulk traffic (full-size or GRO-batched
# datagrams) keeps draining. The TUN side has its own rule (`aio.tun._LONE`).
_BULK = 1024
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


class RelaySender(Protocol):
    """Where relayed datagrams leave: a link to a router (`umbranet.aio.wg_relay`)."""

    def send_relayed(self, peer: bytes, datagram: bytes) -> bool: ...

    def send_relayed_many(self, peer: bytes, datagrams: list[bytes]) -> int: ...


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
        relay: RelaySender | None = None,
        on_path: Callable[[PathChanged], None] | None = None,
        path_deadline: float = 15.0,
        probe_interval: float = 5.0,
    ) -> None:
        self.device = device
        self.relay = relay
        self._on_path = on_path
        self._paths: dict[bytes, PathSet] = {}
        self._path_of: dict[Address, bytes] = {}  # every path's address -> its peer
        self._paths_touched: set[bytes] = set()
        self._path_timer: asyncio.TimerHandle | None = None
        self._path_options = {"deadline": path_deadline, "probe_interval": probe_interval}
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
        # A dual-stack socket (AF_INET6, IPV6_V6ONLY off) sees IPv4 peers as ::ffff:a.b.c.d;
        # the machine and the paths always see the plain IPv4 form.
        self._v6 = getattr(sock, "family", socket.AF_INET) == socket.AF_INET6
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
        self._start_path_timer()
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
        if self._path_timer is not None:
            self._path_timer.cancel()
            self._path_timer = None
        self._loop = None

    def statistics(self) -> dict[str, object]:
        stats: dict[str, object] = {"io": dict(self.counters), "device": self.device.statistics()}
        port_stats = getattr(self._port, "statistics", None)
        if port_stats is not None:
            stats["port"] = port_stats()
        if self.flow_filter is not None:
            stats["filter"] = self.flow_filter.statistics()
        if self._paths:
            stats["paths"] = {key.hex(): p.statistics() for key, p in self._paths.items()}
        return stats

    # -- paths ---------------------------------------------------------------------------

    def set_paths(self, peer: bytes, paths: Iterable[Path]) -> None:
        """The configured paths to `peer` (learned `punched` ones are kept); the path set
        starts at once on the best usable one."""
        mono = self._clock.now().mono
        wanted = {p.address: p for p in paths}
        pathset = self._paths.get(peer)
        if pathset is None:
            pathset = self._paths[peer] = PathSet(peer, **self._path_options)
        for old in pathset.paths():
            if old.address not in wanted and old.kind is not PathKind.PUNCHED:
                pathset.remove(old.address, mono)
                self._path_of.pop(old.address, None)
        # trusted paths first, so an unproven direct path is never chosen on the way
        for path in sorted(wanted.values(), key=lambda p: p.needs_proof):
            pathset.add(path, mono)  # a proven address keeps its proof (`PathSet.add`)
            self._path_of[path.address] = peer
        self._paths_touched.add(peer)
        self._start_path_timer()
        if self._loop is not None:
            self._flush()

    def forget_paths(self, peer: bytes) -> None:
        pathset = self._paths.pop(peer, None)
        if pathset is not None:
            for path in pathset.paths():
                self._path_of.pop(path.address, None)

    def path_set(self, peer: bytes) -> PathSet | None:
        """The peer's path set, for NAT traversal to add the pairs its probes prove."""
        return self._paths.get(peer)

    def current_path(self, peer: bytes) -> Path | None:
        pathset = self._paths.get(peer)
        return None if pathset is None else pathset.current

    def handle_relayed(self, peer: bytes, datagrams: list[bytes]) -> None:
        """Datagrams the router relayed from `peer` (the key its link's SVID binds), in the
        order they came: opened as one burst, flushed once."""
        now = self._clock.now()
        self.counters["relay_datagrams_in"] += len(datagrams)
        source = relay_address(peer)
        self.device.handle_datagrams(datagrams, source, now)
        seen = self.device.last_authenticated
        if seen is not None and seen[2] == now.mono and seen[1] == source and seen[0] == peer:
            self._authenticated(peer, source, now.mono)
        self._flush()

    def handle_network_change(self) -> None:
        """Local addresses changed: every path must prove itself again."""
        mono = self._clock.now().mono
        for key, pathset in self._paths.items():
            pathset.handle_network_change(mono)
            self._paths_touched.add(key)
        self._flush()

    # -- readiness callbacks -------------------------------------------------------------

    def _on_udp(self) -> None:
        now = self._clock.now()
        device = self.device
        handle = device.handle_datagram
        handle_all = device.handle_datagrams
        track = bool(self._paths)
        proofs: set[tuple[bytes, Address]] = set()
        for _ in range(self._batch):
            try:
                data, ancdata, _, addr = self._sock.recvmsg(_MAX_DATAGRAM, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # e.g. ECONNREFUSED from an ICMP error for an earlier send: keep reading
                self.counters["udp_recv_errors"] += 1
                continue
            host = addr[0]
            if self._v6 and host.startswith("::ffff:") and "." in host:
                host = host[7:]
            source = (host, addr[1])
            segment = _gro_segment_size(ancdata)
            if segment and len(data) > segment:
                self.counters["udp_gro_batches"] += 1
                datagrams = [data[i : i + segment] for i in range(0, len(data), segment)]
                self.counters["udp_datagrams_in"] += len(datagrams)
                handle_all(datagrams, source, now)
            else:
                self.counters["udp_datagrams_in"] += 1
                handle(data, source, now)
            if track:
                seen = device.last_authenticated
                if seen is not None and seen[1] == source and seen[2] == now.mono:
                    proofs.add((seen[0], source))
            if not segment and len(data) < _BULK:
                break  # see _BULK
        for peer, source in proofs:
            self._authenticated(peer, source, now.mono)
        self._flush(now)

    def _on_packets(self) -> None:
        now = self._clock.now()
        packets = self._port.read_batch(self._batch)
        self.counters["tun_packets_in"] += len(packets)
        flows = self.flow_filter
        if flows is not None:
            flows.handle_outbound_batch(packets, now.mono)
        self.device.send_packets(packets, now)
        self._flush(now)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._clock.now()
        self.device.handle_timeout(now)
        self._flush(now)

    # -- outputs -------------------------------------------------------------------------

    def _flush(self, now: Instant | None = None) -> None:
        """Send, deliver and re-arm after an input; `now`: the input's reading of the clock
        (one reading per wake-up is precise enough for paths, flows and timers)."""
        device = self.device
        if now is None:
            now = self._clock.now()
        self._transmit(mono=now.mono)
        if self._paths_touched:
            self._path_work(now)
        flows = self.flow_filter
        mono = now.mono
        inbound: list[bytes] = []
        while (event := device.poll_event()) is not None:
            if type(event) is PacketsReceived:
                if flows is None:
                    inbound.extend(event.packets)
                else:
                    inbound.extend(self._filtered(flows, event.peer, event.packets, mono))
            elif self._on_event is not None:
                self._on_event(event)
        if inbound:
            self._write_port(inbound)
        self._arm_timer(mono)

    def _filtered(
        self, flows: FlowFilter, peer: bytes, packets: list[bytes], mono: float
    ) -> list[bytes]:
        passed = flows.check_inbound_batch(peer, packets, mono)
        if len(passed) < len(packets):
            self.counters["filter_drops"] += len(packets) - len(passed)
        return passed

    def _write_port(self, packets: list[bytes]) -> None:
        """Hand what peers delivered to the port, in one batch where the port takes one (a
        TUN with offload merges TCP runs into single writes)."""
        write_batch = getattr(self._port, "write_batch", None)
        if write_batch is not None and len(packets) > 1:
            written, dropped = write_batch(packets)
            self.counters["tun_packets_out"] += written
            if dropped:
                self.counters["tun_write_drops"] += dropped
            return
        for packet in packets:
            if self._port.write(packet):
                self.counters["tun_packets_out"] += 1
            else:
                self.counters["tun_write_drops"] += 1

    def _transmit(self, probe: Probe | None = None, mono: float | None = None) -> None:
        """Send what the machine queued: each peer's datagrams on its current path (or, for
        a probe's peer, on the probed path)."""
        device = self.device
        outgoing = device.take_transmit()
        if not outgoing:
            return
        if self._paths:
            outgoing = self._route(outgoing, probe, mono)
        if outgoing:
            self._send_all(outgoing)

    def _route(
        self, outgoing: list[tuple[bytes, Address]], probe: Probe | None, mono: float | None
    ) -> list[tuple[bytes, Address]]:
        direct: list[tuple[bytes, Address]] = []
        relayed_to: dict[bytes, list[bytes]] = {}  # sent in one write per peer
        sent: set[tuple[bytes, Address]] = set()
        # A flush sends runs of datagrams to a few addresses: decide once per address.
        decided: dict[Address, tuple[bytes | None, Address, bool]] = {}
        for data, addr in outgoing:
            choice = decided.get(addr)
            if choice is None:
                choice = decided[addr] = self._decide(addr, probe)
            peer, dest, relayed = choice
            if peer is None:
                if relayed:
                    self.counters["relay_no_paths"] += 1
                else:
                    direct.append((data, addr))
                continue
            if len(data) > _KEEPALIVE_SIZE and probe is None:
                sent.add((peer, dest))  # a keepalive is not answered: no silence clock
            if not relayed:
                direct.append((data, dest))
            else:
                relayed_to.setdefault(peer, []).append(data)
        for peer, datagrams in relayed_to.items():
            taken = 0 if self.relay is None else self.relay.send_relayed_many(peer, datagrams)
            self.counters["relay_datagrams_out"] += taken
            if taken < len(datagrams):
                self.counters["relay_send_drops"] += len(datagrams) - taken
        if sent:
            when = self._clock.now().mono if mono is None else mono
            for peer, dest in sent:
                self._paths[peer].handle_sent(dest, when)
        return direct

    def _decide(self, addr: Address, probe: Probe | None) -> tuple[bytes | None, Address, bool]:
        """(peer, destination, relayed?) for a datagram the machine addressed to `addr`;
        peer None: not a peer with paths (sent as addressed, or dropped if a relay address)."""
        peer = self._path_of.get(addr) or relay_peer(addr)
        pathset = None if peer is None else self._paths.get(peer)
        if pathset is None or peer is None:
            return None, addr, relay_peer(addr) is not None
        if probe is not None and peer == probe.peer:
            dest = probe.path.address
        else:
            current = pathset.current
            dest = addr if current is None else current.address
        return peer, dest, relay_peer(dest) is not None

    def _authenticated(self, peer: bytes, source: Address, mono: float) -> None:
        pathset = self._paths.get(peer)
        if pathset is None:
            return
        if not pathset.has(source):
            learned = [p for p in pathset.paths() if p.kind is PathKind.PUNCHED]
            if relay_peer(source) is not None or len(learned) >= MAX_LEARNED_PATHS:
                return
            pathset.add(Path(PathKind.PUNCHED, source), mono)
            self._path_of[source] = peer
            self.counters["paths_learned"] += 1
        pathset.handle_authenticated(source, mono)
        self._paths_touched.add(peer)

    def _path_work(self, now: Instant) -> None:
        touched, self._paths_touched = self._paths_touched, set()
        for peer in touched:
            pathset = self._paths.get(peer)
            if pathset is None:
                continue
            while (event := pathset.poll_event()) is not None:
                self.counters["path_changes"] += 1
                log.info(
                    "network mode: peer %s path %s -> %s (%s)",
                    peer.hex()[:12],
                    None if event.old is None else event.old.kind.value,
                    None if event.new is None else event.new.kind.value,
                    event.reason,
                )
                if self._on_path is not None:
                    self._on_path(event)
            while (probe := pathset.poll_probe()) is not None:
                self.counters["path_probes"] += 1
                self.device.send_to(probe.peer, b"", now)
                self._transmit(probe)

    def _start_path_timer(self) -> None:
        if self._path_timer is None and self._loop is not None and self._paths:
            self._path_timer = self._loop.call_later(PATH_TICK, self._on_path_timer)

    def _on_path_timer(self) -> None:
        self._path_timer = None
        mono = self._clock.now().mono
        for peer, pathset in self._paths.items():
            deadline = pathset.poll_timeout()
            if deadline is not None and deadline.at <= mono:
                pathset.handle_timeout(mono)
                self._paths_touched.add(peer)
        if self._paths_touched:
            self._flush()
        self._start_path_timer()

    def _send_all(self, outgoing: list[tuple[bytes, tuple[str, int]]]) -> None:
        if len(outgoing) == 1:  # an answer, an ACK, a keepalive
            self._send_one(*outgoing[0])
            return
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
                self._wire(addr),
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
            self._sock.sendto(data, self._wire(addr))
            self.counters["udp_datagrams_out"] += 1
        except OSError:
            self.counters["udp_send_errors"] += 1

    def _wire(self, addr: Address) -> Address:
        """The address as the socket takes it (IPv4-mapped on a dual-stack socket)."""
        if self._v6 and ":" not in addr[0]:
            return ("::ffff:" + addr[0], addr[1])
        return addr

    def _arm_timer(self, mono: float) -> None:
        loop = self._loop
        if loop is None:
            return
        deadline = self.device.poll_timeout()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_at = None
            return
        at = self._timer_at
        if self._timer is not None and at is not None and at <= deadline.at:
            # Armed no later than needed: traffic pushes WireGuard's timers later with every
            # packet, and re-arming each time cost a quarter of a small packet's round trip
            # (`bench/l3_rr_cpu.py`). A wake-up that comes early finds nothing due and arms
            # the timer again (`_on_timer`).
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, deadline.at - mono)
        self._timer = loop.call_later(delay, self._on_timer)
        self._timer_at = deadline.at


def _gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The segment size the kernel reports for a GRO-coalesced read (0 if not coalesced)."""
    for level, kind, value in ancdata:
        if level == _SOL_UDP and kind == _UDP_GRO and value:
            width = 4 if len(value) >= 4 else 2
            return int.from_bytes(value[:width], sys.byteorder)
    return 0
