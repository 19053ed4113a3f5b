"""NAT traversal beside a WireGuard device on one UDP port (sans-IO).

`Traversal` owns the address discovery (`BindingClient`) and the connectivity checks
(`ProbeAgent`) that share the WireGuard socket, and demultiplexes what arrives there:

    first byte 1-4 and three zero bytes   -> WireGuard (`Device.handle_datagram`)
    STUN magic cookie at bytes 4-8        -> the binding client
    probe magic 0xF5 "UPB"                -> the probe agent
    anything else                         -> WireGuard, which counts it (`bad_type`)

It gathers this socket's candidates (host addresses given by the shell, server-reflexive
from the STUN answers) and classifies the NAT, and when a probe pair is selected for a peer
it points the device's endpoint for that peer at it (`PathSelected`); the shell (or the
relay branch's path abstraction) decides what to do on `PathLost`/`DirectFailed`, which are
queued in `poll_path_event`.

`DeviceShell` (`as_device`) presents the device with traversal's datagrams merged in, so an
IO shell written for a bare `Device` (the WireGuard driver) carries both without change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from umbranet.clock import Deadline, Instant
from umbranet.proto.ice import (
    Candidate,
    DirectFailed,
    PathLost,
    PathSelected,
    ProbeAgent,
    classify_mapping,
    host_candidates,
)
from umbranet.proto.ice import Event as PathEvent
from umbranet.proto.paths import Path, PathKind, PathSet
from umbranet.proto.stun import BindingClient, BindingFailed, BindingResult, is_stun
from umbranet.proto.turn import Allocated, AllocationFailed, DataReceived, TurnClient
from umbranet.proto.wireguard import Device
from umbranet.proto.wireguard.events import Event as DeviceEvent

__all__ = ["Gathered", "Traversal", "is_wireguard"]

Address = tuple[str, int]


def is_wireguard(data: bytes) -> bool:
    return len(data) >= 4 and 1 <= data[0] <= 4 and data[1:4] == b"\0\0\0"


@dataclass(frozen=True, slots=True)
class Gathered:
    """The result of one gathering round: what to publish through the controller."""

    candidates: list[Candidate]
    nat: str
    rtt: dict[str, float | None]


class Traversal:
    """STUN + probes beside `device`; see the module docstring."""

    def __init__(
        self,
        device: Device,
        private_key: bytes,
        public_key: bytes,
        *,
        random_bytes: Callable[[int], bytes],
        agent: ProbeAgent | None = None,
        paths: Callable[[bytes], PathSet | None] | None = None,
    ) -> None:
        """With `paths` (the path abstraction's set for a peer, from the shell), pairs the
        probes select and lose are added to and removed from it, and the shell moves the
        device along its current path; without, the device's endpoint follows the pair."""
        self.device = device
        self._paths = paths
        # called when traversal queued datagrams of its own while handling input, so the
        # shell that sends them (not the device's driver) wakes up
        self.on_queued: Callable[[], None] | None = None
        self.stun = BindingClient(random_bytes)
        self.agent = agent or ProbeAgent(private_key, public_key, random_bytes=random_bytes)
        self._results: list[BindingResult] = []
        self._failures: list[BindingFailed] = []
        self._servers: list[Address] = []
        self._path_events: list[PathEvent] = []
        self.direct: dict[bytes, Address] = {}
        # the path set each selected pair was last offered to (a rebuilt set is another)
        self._offered: dict[bytes, tuple[PathSet, Address]] = {}
        self.counters: Counter[str] = Counter()
        self._random = random_bytes
        self.turn: TurnClient | None = None
        self.turn_failed: str | None = None
        self._via_turn: set[Address] = set()  # peers' addresses heard through our relay
        self._heard_direct: set[Address] = set()  # ... and those heard without it
        self._rewrapped: list[tuple[bytes, Address]] = []
        self._turn_out: list[tuple[bytes, Address]] = []  # answers through our relay
        self._requeue: list[tuple[bytes, Address]] = []
        self._peer_ips: dict[bytes, set[str]] = {}

    # -- gathering ------------------------------------------------------------------------

    def gather(self, servers: Sequence[Address], now: Instant) -> None:
        """Ask every STUN server how it sees this socket (answers arrive as datagrams)."""
        self._results.clear()
        self._failures.clear()
        self._servers = list(servers)
        self.stun.start_all(servers, now)

    @property
    def gathering(self) -> bool:
        return self.stun.busy

    def gathered(self, local: Iterable[str], port: int) -> Gathered:
        """Candidates and NAT class from the last round (call once `gathering` is False)."""
        addresses = list(local)
        mine = host_candidates(addresses, port)
        for mapped in sorted({r.mapped for r in self._results}):
            if mapped[0] not in addresses:
                mine.append(Candidate("srflx", mapped))
        nat = classify_mapping(self._results, addresses) if self._results else "udp-blocked"
        if not self._servers:
            nat = "unknown"
        rtt: dict[str, float | None] = {f"{h}:{p}": None for h, p in self._servers}
        for r in self._results:
            rtt[f"{r.server[0]}:{r.server[1]}"] = r.rtt
        return Gathered(mine, nat, rtt)

    def set_peer(self, public: bytes, candidates: Sequence[Candidate], now: Instant) -> None:
        self.agent.set_peer(public, candidates, now)
        ips = {c.address[0] for c in candidates if c.kind != "host"}
        self._peer_ips[public] = ips
        self._permit(ips, now)

    # -- TURN: our own relay, for when no direct pair works -------------------------------

    def set_turn(self, server: Address, username: str, password: str, now: Instant) -> None:
        """Allocate a relay on a TURN server (credentials from the controller); once
        allocated, `relayed` is a candidate to publish. Peers' public IPs get permissions,
        so their probes (and then WireGuard) reach us through it; what arrives through it
        is answered through it."""
        self.turn = TurnClient(server, username, password, random_bytes=self._random)
        self.turn_failed = None
        self.turn.allocate(now)

    @property
    def relayed(self) -> Address | None:
        return None if self.turn is None else self.turn.relayed

    def is_relayed(self, peer: bytes) -> bool:
        """Whether the selected pair for `peer` goes through a TURN relay (ours or theirs)."""
        address = self.direct.get(peer)
        if address is None:
            return False
        return address in self._via_turn or self.agent.path_kind(peer) == "relay"

    def _permit(self, ips: Iterable[str], now: Instant) -> None:
        turn = self.turn
        if turn is None or turn.relayed is None:
            return
        for ip in sorted(set(ips)):
            if not turn.has_permission(ip):
                turn.create_permission(ip, now)

    def _drain_turn(self, now: Instant) -> None:
        turn = self.turn
        if turn is None:
            return
        while (event := turn.poll_event()) is not None:
            if isinstance(event, Allocated):
                self.counters["turn_allocated"] += 1
                for ips in self._peer_ips.values():
                    self._permit(ips, now)
            elif isinstance(event, AllocationFailed):
                self.turn_failed = event.reason
                self.counters["turn_failed"] += 1
            elif isinstance(event, DataReceived):
                self.counters["turn_data_in"] += 1
                if event.peer not in self._heard_direct:
                    # only an address that never reached us directly is answered through the
                    # relay: one that did is reachable directly (its NAT let it send to us)
                    self._via_turn.add(event.peer)
                self._inner(event.data, event.peer, now)

    def _inner(self, data: bytes, addr: Address, now: Instant) -> None:
        """A datagram a peer sent to our relay, as if it had reached our socket."""
        if is_wireguard(data):
            self.device.handle_datagram(data, addr, now)
            return
        queued: list[tuple[bytes, Address]] = []
        while (out := self.agent.poll_transmit()) is not None:
            queued.append(out)  # what was waiting already goes its own way
        if self.agent.handle_datagram(data, addr, now):
            # the answer to a probe that came through our relay goes back through it (the
            # probe tested that way); our own probes always go straight, to punch holes
            while (out := self.agent.poll_transmit()) is not None:
                self._turn_out.extend(self.relay_wrap(out[1], out[0]))
            self._drain_agent(now)
        else:
            self.counters["turn_data_dropped"] += 1
        self._requeue.extend(queued)

    def remove_peer(self, public: bytes) -> None:
        self.agent.remove_peer(public)
        self.direct.pop(public, None)
        self._offered.pop(public, None)

    # -- the device's interface, with traversal merged in ---------------------------------

    def handle_datagram(self, data: bytes, addr: Address, now: Instant) -> None:
        self._handle(data, addr, now)
        if self.on_queued is not None and self._own_queued():
            self.on_queued()

    def handle_datagrams(self, datagrams: Iterable[bytes], addr: Address, now: Instant) -> None:
        """A burst from one address (a UDP GRO read): runs of WireGuard messages go to the
        device as one batch, anything else is handled on its own, in order."""
        if self.turn is not None:
            for data in datagrams:
                self._handle(data, addr, now)
        else:
            run: list[bytes] = []
            for data in datagrams:
                if is_wireguard(data):
                    run.append(data)
                    continue
                if run:
                    self.device.handle_datagrams(run, addr, now)
                    run = []
                self._handle(data, addr, now)
            if run:
                self.device.handle_datagrams(run, addr, now)
        if self.on_queued is not None and self._own_queued():
            self.on_queued()

    def _own_queued(self) -> bool:
        return bool(
            self.stun.queued
            or self.agent.queued
            or self._turn_out
            or self._requeue
            or (self.turn is not None and self.turn.queued)
        )

    def _handle(self, data: bytes, addr: Address, now: Instant) -> None:
        turn = self.turn
        if turn is not None and addr == turn.server and turn.handle_datagram(data, addr, now):
            self._drain_turn(now)
            return
        if turn is not None and addr not in self._heard_direct:
            if len(self._heard_direct) >= 4096:
                self._heard_direct.clear()
            self._heard_direct.add(addr)
            self._via_turn.discard(addr)
        if is_wireguard(data):
            self.device.handle_datagram(data, addr, now)
            return
        if is_stun(data) and self.stun.handle_datagram(data, addr, now):
            self.counters["stun_in"] += 1
            self._drain_stun()
            return
        if self.agent.handle_datagram(data, addr, now):
            self.counters["probes_in"] += 1
            self._drain_agent(now)
            return
        self.device.handle_datagram(data, addr, now)

    def handle_timeout(self, now: Instant) -> None:
        self.device.handle_timeout(now)
        self.stun.handle_timeout(now)
        self.agent.handle_timeout(now)
        if self.turn is not None:
            self.turn.handle_timeout(now)
            self._drain_turn(now)
        self._drain_stun()
        self._drain_agent(now)

    def send_packet(self, packet: bytes, now: Instant) -> None:
        self.device.send_packet(packet, now)

    def send_packets(self, packets: Iterable[bytes], now: Instant) -> None:
        self.device.send_packets(packets, now)

    def poll_transmit(self) -> tuple[bytes, Address] | None:
        """The device's datagrams. Traversal's own come from `poll_own_transmit`: a
        path-routing driver must not move a probe meant for one candidate onto the peer's
        current path. Either kind addressed to a peer heard only through our TURN relay
        must leave wrapped for it (`relay_wrap`), which the shell's socket does."""
        return self.device.poll_transmit()

    def take_transmit(self) -> list[tuple[bytes, Address]]:
        """Every datagram `poll_transmit` would give, at once."""
        return self.device.take_transmit()

    def via_turn(self, address: Address) -> bool:
        """Whether `address` hears us only through our TURN relay."""
        return address in self._via_turn

    def relay_wrap(self, address: Address, data: bytes) -> list[tuple[bytes, Address]]:
        """`data` for `address` as datagrams to our TURN server (empty without a relay)."""
        turn = self.turn
        if turn is None:
            return []
        turn.send(address, data)
        out: list[tuple[bytes, Address]] = []
        while (item := turn.poll_transmit()) is not None:
            out.append(item)
        return out

    def poll_own_transmit(self) -> tuple[bytes, Address] | None:
        """STUN, probe and TURN datagrams, each to its own address."""
        turn = self.turn
        if turn is not None and (out := turn.poll_transmit()) is not None:
            return out
        if self._turn_out:
            return self._turn_out.pop(0)
        if self._requeue:
            return self._requeue.pop(0)
        return self.stun.poll_transmit() or self.agent.poll_transmit()

    def poll_all_transmit(self) -> tuple[bytes, Address] | None:
        """Both, with WireGuard datagrams wrapped for our TURN relay where needed (for a
        shell with a plain socket; `RelayingSocket` does the same for the driver)."""
        if self._rewrapped:
            return self._rewrapped.pop(0)
        own = self.poll_own_transmit()
        if own is not None:
            return own
        out = self.poll_transmit()
        if out is not None and out[1] in self._via_turn:
            wrapped = self.relay_wrap(out[1], out[0])
            self._rewrapped.extend(wrapped[1:])
            return wrapped[0] if wrapped else None
        return out

    @property
    def last_authenticated(self) -> tuple[bytes, Address, float] | None:
        return self.device.last_authenticated

    def send_to(self, public: bytes, packet: bytes, now: Instant) -> None:
        self.device.send_to(public, packet, now)

    def poll_event(self) -> DeviceEvent | None:
        return self.device.poll_event()

    def poll_path_event(self) -> PathEvent | None:
        return self._path_events.pop(0) if self._path_events else None

    def poll_timeout(self) -> Deadline | None:
        # Asked after every packet: the earliest, compared in place (the first of equals).
        best = self.device.poll_timeout()
        turn = self.turn.poll_timeout() if self.turn is not None else None
        for other in (self.stun.poll_timeout(), self.agent.poll_timeout(), turn):
            if other is not None and (best is None or other.at < best.at):
                best = other
        return best

    def statistics(self) -> dict[str, object]:
        stats = self.device.statistics()
        stats["traversal"] = {
            "counters": dict(self.counters),
            "stun": self.stun.statistics(),
            "probes": self.agent.statistics(),
            "direct": {k.hex(): f"{a[0]}:{a[1]}" for k, a in self.direct.items()},
            "turn": None if self.turn is None else self.turn.statistics(),
        }
        return stats

    # -- events ---------------------------------------------------------------------------

    def drain(self, now: Instant) -> None:
        """Take the binding, probe and relay events (for a shell that fired their timers)."""
        self._drain_stun()
        self._drain_turn(now)
        self._drain_agent(now)

    def _drain_stun(self) -> None:
        while (event := self.stun.poll_event()) is not None:
            if isinstance(event, BindingResult):
                self._results.append(event)
            else:
                self._failures.append(event)

    def _drain_agent(self, now: Instant) -> None:
        while (event := self.agent.poll_event()) is not None:
            paths = self._paths(event.peer) if self._paths is not None else None
            if isinstance(event, PathSelected):
                if event.peer not in self.device.peers():
                    continue
                self.direct[event.peer] = event.address
                self.counters["direct_selected"] += 1
                if paths is not None:
                    self._offer(paths, event, now)
                    if self._never_handshaked(event.peer):
                        self.device.initiate(event.peer, now)
                else:
                    self.device.add_peer(event.peer, endpoint=event.address)
                    if self._never_handshaked(event.peer):
                        # packets staged while no endpoint was known go now, not at the
                        # next packet or retry timer
                        self.device.initiate(event.peer, now)
            elif isinstance(event, PathLost | DirectFailed):
                lost = self.direct.pop(event.peer, None)
                if paths is not None and lost is not None:
                    paths.remove(lost, now.mono)
            self._path_events.append(event)

    def _offer(self, paths: PathSet, event: PathSelected, now: Instant) -> None:
        """A pair the probes proved, as a punched path (or the configured direct path, when it
        is that address). The sealed pong was
        the authenticated exchange the path set asks for, so it counts as the path's proof
        and the set may move onto it at once."""
        self._offer_address(paths, event.address, event.kind, event.rtt, now)
        self._offered[event.peer] = (paths, event.address)

    def _offer_address(
        self, paths: PathSet, address: Address, kind: str, rtt: float, now: Instant
    ) -> None:
        if not paths.has(address):
            for old in paths.paths():
                if old.kind is PathKind.PUNCHED:
                    paths.remove(old.address, now.mono)  # one probe-found pair per peer
            # always `punched`, even through a TURN relay (`is_relayed` tells those apart):
            # the driver keeps learned punched paths when it reconfigures a peer's paths,
            # and drops any other kind it was not given
            paths.add(Path(PathKind.PUNCHED, address), now.mono)
        if not paths.proven(address):
            paths.handle_sent(address, now.mono - rtt)
            paths.handle_authenticated(address, now.mono)

    def reoffer(self, now: Instant) -> None:
        """Offer every selected pair to a path set that has not had it: the shell may have
        rebuilt a peer's set (a new one starts with no punched pair), or the selection came
        before the set existed. A set that was offered the pair keeps it as it is: it may
        have seen the pair go silent since, and only its own exchanges prove it again."""
        if self._paths is None:
            return
        for peer, address in self.direct.items():
            paths = self._paths(peer)
            if paths is None:
                continue
            offered = self._offered.get(peer)
            if offered is not None and offered[0] is paths and offered[1] == address:
                continue
            kind = self.agent.path_kind(peer) or "punched"
            self._offer_address(paths, address, kind, 0.0, now)
            self._offered[peer] = (paths, address)

    def _never_handshaked(self, peer: bytes) -> bool:
        per_peer = self.device.statistics().get("per_peer")
        if not isinstance(per_peer, dict):
            return False
        entry = per_peer.get(peer.hex())
        return isinstance(entry, dict) and entry.get("last_handshake") is None
