"""The IO shell of NAT traversal: STUN binding checks and peer probes over one UDP socket.

`NatSocket` drives a `BindingClient` (address discovery) and a `ProbeAgent` (connectivity
checks) over a bound non-blocking UDP socket, demultiplexing by first bytes: STUN has its
magic cookie, probes their own magic; anything else goes to `other` (the WireGuard device,
when the socket is shared with it) or is counted and dropped. `netcheck()` is the one-shot
use behind `umbra netcheck`; the NAT lab runs `NatSocket` with probes between namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from umbranet.clock import Clock, system_clock
from umbranet.proto.ice import Event as IceEvent
from umbranet.proto.ice import ProbeAgent, classify_mapping
from umbranet.proto.stun import BindingClient, BindingFailed, BindingResult

__all__ = ["NatSocket", "NetcheckReport", "local_addresses", "netcheck", "parse_hostport"]

Address = tuple[str, int]
_SIOCGIFADDR = 0x8915


def parse_hostport(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def local_addresses(skip: Collection[str] = ()) -> list[str]:
    """Every address of this network namespace's interfaces except those named in `skip`
    (IPv4 by ioctl, IPv6 from /proc): the host candidates. Network mode skips its own TUN:
    an overlay address as a candidate would route the tunnel through itself. Loopback and
    link-local are filtered by the caller."""
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            if name in skip:
                continue
            request = struct.pack("256s", name.encode()[:15])
            with contextlib.suppress(OSError):
                answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
                found.append(socket.inet_ntoa(answer[20:24]))
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            fields = line.split()
            if len(fields) < 6 or fields[5] in skip:
                continue
            found.append(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[0])))
    return found


@dataclass(slots=True)
class NetcheckReport:
    """What `umbra netcheck` prints."""

    udp: bool
    local: Address
    mapping: str
    mapped: list[Address] = field(default_factory=list)
    rtt: dict[str, float | None] = field(default_factory=dict)  # server -> seconds
    home: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "udp": self.udp,
            "local": f"{self.local[0]}:{self.local[1]}",
            "mapping": self.mapping,
            "mapped": [f"{h}:{p}" for h, p in self.mapped],
            "rtt_ms": {k: None if v is None else round(v * 1000, 3) for k, v in self.rtt.items()},
            "home": self.home,
        }


class NatSocket:
    """STUN + probes (+ optionally WireGuard via `other`) over one bound UDP socket."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        agent: ProbeAgent | None = None,
        clock: Clock = system_clock,
        random_bytes: Callable[[int], bytes] = os.urandom,
        other: Callable[[bytes, Address], None] | None = None,
        on_event: Callable[[IceEvent | BindingResult | BindingFailed], None] | None = None,
    ) -> None:
        self.sock = sock
        self.stun = BindingClient(random_bytes)
        self.agent = agent
        self._clock = clock
        self._other = other
        self._on_event = on_event
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.counters: Counter[str] = Counter()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._readable)
        self.flush()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            if self._timer is not None:
                self._timer.cancel()
            self._loop = None

    @property
    def local(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def _readable(self) -> None:
        now = self._clock.now()
        for _ in range(64):
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.counters["recv_errors"] += 1
                continue
            source = (str(addr[0]), int(addr[1]))
            if self.stun.handle_datagram(data, source, now):
                continue
            if self.agent is not None and self.agent.handle_datagram(data, source, now):
                continue
            if self._other is not None:
                self._other(data, source)
            else:
                self.counters["drop_unknown_datagram"] += 1
        self.flush()

    def _on_timer(self) -> None:
        self._timer = None
        now = self._clock.now()
        self.stun.handle_timeout(now)
        if self.agent is not None:
            self.agent.handle_timeout(now)
        self.flush()

    def flush(self) -> None:
        machines: list[BindingClient | ProbeAgent] = [self.stun]
        if self.agent is not None:
            machines.append(self.agent)
        for machine in machines:
            while (out := machine.poll_transmit()) is not None:
                try:
                    self.sock.sendto(out[0], out[1])
                except OSError:
                    self.counters["send_errors"] += 1
        events: list[IceEvent | BindingResult | BindingFailed] = []
        while (e := self.stun.poll_event()) is not None:
            events.append(e)
        if self.agent is not None:
            while (ice := self.agent.poll_event()) is not None:
                events.append(ice)
        if self._on_event is not None:
            for event in events:
                self._on_event(event)
        self._arm()

    def _arm(self) -> None:
        if self._loop is None:
            return
        deadlines = [d.at for m in (self.stun, self.agent) if m and (d := m.poll_timeout())]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadlines:
            delay = max(0.0, min(deadlines) - self._clock.now().mono)
            self._timer = self._loop.call_later(delay, self._on_timer)


async def netcheck(
    servers: Sequence[Address],
    *,
    sock: socket.socket | None = None,
    timeout: float = 3.0,
    local: Iterable[str] | None = None,
) -> NetcheckReport:
    """Ask every STUN server how it sees one UDP socket; classify the NAT from the answers."""
    own = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if sock is None:
        own.bind(("0.0.0.0", 0))
    results: list[BindingResult] = []
    failures: list[BindingFailed] = []
    done = asyncio.Event()

    def on_event(event: object) -> None:
        if isinstance(event, BindingResult):
            results.append(event)
        elif isinstance(event, BindingFailed):
            failures.append(event)
        if len(results) + len(failures) >= len(servers):
            done.set()

    shell = NatSocket(own, on_event=on_event)
    bound = shell.local
    try:
        shell.start()
        shell.stun.start_all(servers, system_clock.now())
        shell.flush()
        if servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
    finally:
        shell.close()
        if sock is None:
            own.close()
    addresses = list(local) if local is not None else local_addresses()
    mapping = classify_mapping(results, addresses) if results else "udp-blocked"
    rtt: dict[str, float | None] = {f"{h}:{p}": None for h, p in servers}
    for r in results:
        rtt[f"{r.server[0]}:{r.server[1]}"] = r.rtt
    answered = [(v, k) for k, v in rtt.items() if v is not None]
    mapped = sorted({r.mapped for r in results})
    return NetcheckReport(
        udp=bool(results),
        local=bound,
        mapping=mapping,
        mapped=mapped,
        rtt=rtt,
        home=min(answered)[1] if answered else None,
    )
