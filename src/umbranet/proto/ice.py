"""Candidates, NAT mapping classification and connectivity checks between peers (sans-IO).

Why not `aioice`: it runs its own sockets and its own STUN checks authenticated by
per-session ufrag/pwd exchanged in SDP, while here the checks must share the WireGuard UDP
port (the NAT mapping a check opens is the one WireGuard then uses), be driven by the same
`now` as the rest of the machines, and be authenticated by the identities' static X25519
keys the controller already vouches for (`proto/probe.py`). What is kept from ICE: candidate
kinds and their preference, checks from both sides at once, peer-reflexive candidates
learned from an authenticated check, and keepalives on the selected pair.

The rules, per peer:

    CHECKING  --pong from a candidate-->       CONNECTED (PathSelected)
    CHECKING  --every candidate out of tries--> FAILED    (DirectFailed)
    CONNECTED --`dead_after` keepalives unanswered--> CHECKING (PathLost)
    CONNECTED --a better-ranked candidate answers--> CONNECTED (PathSelected again)
    FAILED    --`retry_after` elapsed, or new candidates--> CHECKING

While CHECKING each candidate gets a ping every `interval` seconds, `tries` times. Any
authenticated ping is answered (to its source) in every state, and a ping from an address the
peer did not announce becomes a peer-reflexive candidate: behind an address-dependent NAT
that is the only address that reaches the peer. Ranking: host before server-reflexive before
peer-reflexive, then lower round-trip time. Both sides rank the same way, and WireGuard
answers to where packets come from, so they settle on one pair without a nomination step.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from umbranet.clock import Deadline, Instant, deadline
from umbranet.proto import probe as _probe
from umbranet.proto.stun import BindingResult

__all__ = [
    "Candidate",
    "DirectFailed",
    "PathLost",
    "PathSelected",
    "PeerState",
    "ProbeAgent",
    "classify_mapping",
    "host_candidates",
]

Address = tuple[str, int]
KIND_RANK = {"host": 0, "srflx": 1, "prflx": 2, "relay": 3}
MAX_CANDIDATES = 8  # per peer, announced; peer-reflexive ones add at most as many again
REPLAY_CACHE = 4096


@dataclass(frozen=True, slots=True)
class Candidate:
    kind: str  # "host", "srflx", "prflx", "relay"
    address: Address

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "host": self.address[0], "port": self.address[1]}

    @classmethod
    def from_json(cls, raw: object) -> Candidate | None:
        """A candidate from signalling, or None if malformed (IP literals only)."""
        if not isinstance(raw, dict):
            return None
        kind, host, port = raw.get("kind"), raw.get("host"), raw.get("port")
        if kind not in ("host", "srflx", "relay") or not isinstance(host, str):
            return None
        if not isinstance(port, int):
            return None
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None
        if not 0 < port < 65536:
            return None
        return cls(kind, (host, port))


def host_candidates(addresses: Iterable[str], port: int) -> list[Candidate]:
    """Host candidates: every usable local address (no loopback, link-local or multicast)."""
    out: list[Candidate] = []
    for text in addresses:
        ip = ipaddress.ip_address(text)
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            continue
        out.append(Candidate("host", (str(ip), port)))
    return out


def classify_mapping(results: Sequence[BindingResult], local: Iterable[str] = ()) -> str:
    """How the NAT in front of one socket maps it, from binding results of several servers:
    `no-nat` (a mapped address is ours), `endpoint-independent` (same mapped address and port
    towards every server), `endpoint-dependent` (they differ), `unknown` (under two answers)."""
    if not results:
        return "unknown"
    local_set = set(local)
    mapped = {r.mapped for r in results}
    if len(mapped) == 1 and next(iter(mapped))[0] in local_set:
        return "no-nat"
    if len({r.server for r in results}) < 2:
        return "unknown"
    return "endpoint-independent" if len(mapped) == 1 else "endpoint-dependent"


class PeerState(enum.Enum):
    CHECKING = "checking"
    CONNECTED = "connected"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PathSelected:
    peer: bytes
    address: Address
    kind: str
    rtt: float


@dataclass(frozen=True, slots=True)
class PathLost:
    peer: bytes
    address: Address
    reason: str


@dataclass(frozen=True, slots=True)
class DirectFailed:
    peer: bytes
    reason: str


Event = PathSelected | PathLost | DirectFailed


@dataclass(slots=True)
class _Check:
    candidate: Candidate
    tries: int = 0
    next_at: float = 0.0
    rtt: float | None = None


@dataclass(slots=True)
class _Peer:
    public: bytes
    key: bytes
    state: PeerState = PeerState.CHECKING
    checks: dict[Address, _Check] = field(default_factory=dict)
    selected: _Check | None = None
    outstanding: dict[bytes, tuple[Address, float]] = field(default_factory=dict)
    keepalive_at: float = 0.0
    unanswered: int = 0
    retry_at: float = 0.0


class ProbeAgent:
    """Connectivity checks towards every peer, over one socket."""

    def __init__(
        self,
        private_key: bytes,
        public_key: bytes,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        interval: float = 0.2,
        tries: int = 25,
        keepalive: float = 10.0,
        dead_after: int = 3,
        retry_after: float = 30.0,
    ) -> None:
        self._private = private_key
        self._public = public_key
        self._id = _probe.key_id(public_key)
        self._random = random_bytes
        self.interval, self.tries = interval, tries
        self.keepalive, self.dead_after, self.retry_after = keepalive, dead_after, retry_after
        self._peers: dict[bytes, _Peer] = {}
        self._by_id: dict[bytes, bytes] = {}
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._out: list[tuple[bytes, Address]] = []
        self._events: list[Event] = []
        self.counters: Counter[str] = Counter()

    # -- configuration ------------------------------------------------------------------

    def set_peer(self, public: bytes, candidates: Sequence[Candidate], now: Instant) -> None:
        """Add a peer or replace its announced candidates; new candidates restart checks."""
        peer = self._peers.get(public)
        if peer is None:
            try:
                key = _probe.pair_key(self._private, self._public, public)
            except ValueError:
                self.counters["refused_low_order_key"] += 1
                return
            peer = self._peers[public] = _Peer(public, key)
            self._by_id[_probe.key_id(public)] = public
        fresh = False
        wanted = {c.address: c for c in candidates[:MAX_CANDIDATES]}
        for address in list(peer.checks):
            check = peer.checks[address]
            if (
                address not in wanted
                and check.candidate.kind != "prflx"
                and check is not peer.selected
            ):
                del peer.checks[address]
        for address, candidate in wanted.items():
            if address not in peer.checks:
                peer.checks[address] = _Check(candidate, next_at=now.mono)
                fresh = True
        if fresh and peer.state is PeerState.FAILED:
            self._restart(peer, now)

    def remove_peer(self, public: bytes) -> None:
        if self._peers.pop(public, None) is not None:
            self._by_id.pop(_probe.key_id(public), None)

    def state(self, public: bytes) -> PeerState | None:
        peer = self._peers.get(public)
        return None if peer is None else peer.state

    def path_kind(self, public: bytes) -> str | None:
        """The kind of the selected pair's candidate (host, srflx, prflx, relay)."""
        peer = self._peers.get(public)
        if peer is None or peer.selected is None or peer.state is not PeerState.CONNECTED:
            return None
        return peer.selected.candidate.kind

    def path(self, public: bytes) -> Address | None:
        peer = self._peers.get(public)
        if peer is None or peer.selected is None or peer.state is not PeerState.CONNECTED:
            return None
        return peer.selected.candidate.address

    # -- inputs -------------------------------------------------------------------------

    def handle_datagram(self, data: bytes, source: Address, now: Instant) -> bool:
        """Consume a probe (True) or leave the datagram to WireGuard/STUN (False)."""
        if not _probe.is_probe(data):
            return False
        source = _norm(source)
        try:
            public = self._by_id.get(_probe.peek_key_id(data))
            if public is None:
                self.counters["drop_unknown_peer"] += 1
                return True
            peer = self._peers[public]
            message = _probe.open_probe(peer.key, data)
        except _probe.ProbeError as exc:
            self.counters[f"drop_{exc.reason}"] += 1
            return True
        if message.kind == _probe.PING:
            self._on_ping(peer, message, source, now)
        else:
            self._on_pong(peer, message, source, now)
        return True

    def _on_ping(self, peer: _Peer, ping: _probe.Probe, source: Address, now: Instant) -> None:
        if abs(ping.sent_ms / 1000 - now.unix) > _probe.WINDOW:
            self.counters["drop_stale_ping"] += 1
            return
        if ping.nonce in self._seen:
            self.counters["drop_replayed_ping"] += 1
            return
        self._seen[ping.nonce] = now.mono
        while len(self._seen) > REPLAY_CACHE:
            self._seen.popitem(last=False)
        self.counters["pings_answered"] += 1
        pong = _probe.seal_probe(
            peer.key,
            self._id,
            _probe.PONG,
            txid=ping.txid,
            sent_ms=_ms(now),
            nonce=self._random(12),
            observed=source,
        )
        self._out.append((pong, source))
        if source not in peer.checks and len(peer.checks) < 2 * MAX_CANDIDATES:
            self.counters["prflx_learned"] += 1
            peer.checks[source] = _Check(Candidate("prflx", source), next_at=now.mono)
            if peer.state is PeerState.FAILED:
                self._restart(peer, now)

    def _on_pong(self, peer: _Peer, pong: _probe.Probe, source: Address, now: Instant) -> None:
        sent = peer.outstanding.pop(pong.txid, None)
        if sent is None or sent[0] != source:
            self.counters["drop_unexpected_pong"] += 1
            return
        self.counters["pongs"] += 1
        check = peer.checks.get(source)
        if check is None:
            return
        check.rtt = now.mono - sent[1]
        if check is peer.selected:
            peer.unanswered = 0
            return
        best = peer.selected
        if best is None or peer.state is not PeerState.CONNECTED or _rank(check) < _rank(best):
            peer.selected = check
            peer.state = PeerState.CONNECTED
            peer.unanswered = 0
            peer.keepalive_at = now.mono + self.keepalive
            self._events.append(PathSelected(peer.public, source, check.candidate.kind, check.rtt))

    def handle_timeout(self, now: Instant) -> None:
        t = now.mono
        for peer in self._peers.values():
            self._expire(peer, t)
            if peer.state is PeerState.FAILED:
                if t >= peer.retry_at:
                    self._restart(peer, now)
                continue
            selected = peer.selected
            if (
                peer.state is PeerState.CONNECTED
                and selected is not None
                and t >= peer.keepalive_at
            ):
                if peer.unanswered >= self.dead_after:
                    lost = selected.candidate.address
                    self._events.append(PathLost(peer.public, lost, "keepalive_timeout"))
                    self.counters["paths_lost"] += 1
                    self._restart(peer, now)
                    continue
                peer.unanswered += 1
                peer.keepalive_at = t + self.keepalive
                self._ping(peer, selected.candidate.address, now)
            for check in peer.checks.values():
                if check.tries < self.tries and t >= check.next_at:
                    check.tries += 1
                    check.next_at = t + self.interval
                    self._ping(peer, check.candidate.address, now)
            if peer.state is PeerState.CHECKING and all(
                c.tries >= self.tries for c in peer.checks.values()
            ):
                if any(t < c.next_at for c in peer.checks.values()):
                    continue  # the last pings may still be answered
                peer.state = PeerState.FAILED
                peer.retry_at = t + self.retry_after
                reason = "no_candidates" if not peer.checks else "no_candidate_answered"
                self.counters["direct_failed"] += 1
                self._events.append(DirectFailed(peer.public, reason))

    def _restart(self, peer: _Peer, now: Instant) -> None:
        peer.state = PeerState.CHECKING
        peer.selected = None
        peer.unanswered = 0
        for check in peer.checks.values():
            check.tries, check.next_at, check.rtt = 0, now.mono, None

    def _expire(self, peer: _Peer, t: float) -> None:
        horizon = t - max(self.keepalive, self.interval * self.tries) * 2
        for txid, (_, sent_at) in list(peer.outstanding.items()):
            if sent_at < horizon:
                del peer.outstanding[txid]

    def _ping(self, peer: _Peer, address: Address, now: Instant) -> None:
        txid = self._random(12)
        peer.outstanding[txid] = (address, now.mono)
        datagram = _probe.seal_probe(
            peer.key, self._id, _probe.PING, txid=txid, sent_ms=_ms(now), nonce=self._random(12)
        )
        self._out.append((datagram, address))
        self.counters["pings_sent"] += 1

    # -- outputs ------------------------------------------------------------------------

    def poll_transmit(self) -> tuple[bytes, Address] | None:
        return self._out.pop(0) if self._out else None

    @property
    def queued(self) -> bool:
        """Whether datagrams wait in `poll_transmit`."""
        return bool(self._out)

    def poll_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def poll_timeout(self) -> Deadline | None:
        best: tuple[float, str] | None = None
        for peer in self._peers.values():
            due = _deadline(peer, self.tries)
            if due is not None and (best is None or due[0] < best[0]):
                best = due
        return None if best is None else deadline(best)

    def statistics(self) -> dict[str, object]:
        peers = {
            peer.public.hex(): {
                "state": peer.state.value,
                "path": None if peer.selected is None else list(peer.selected.candidate.address),
                "kind": None if peer.selected is None else peer.selected.candidate.kind,
                "rtt": None if peer.selected is None else peer.selected.rtt,
                "candidates": len(peer.checks),
            }
            for peer in self._peers.values()
        }
        return {"counters": dict(self.counters), "peers": peers}


_FAILED, _CONNECTED, _CHECKING = PeerState.FAILED, PeerState.CONNECTED, PeerState.CHECKING


def _deadline(peer: _Peer, tries: int) -> tuple[float, str] | None:
    """The peer's earliest deadline and its reason (keepalive before a check at the same
    time). Asked after every packet the device handles: one tuple, no generator, and the
    states as module globals (an enum member read off its class costs a call each)."""
    state = peer.state
    if state is _FAILED:
        return peer.retry_at, "ice retry"
    best = (peer.keepalive_at, "ice keepalive") if state is _CONNECTED else None
    pending = [c.next_at for c in peer.checks.values() if c.tries < tries]
    if pending:
        at = min(pending)
        if best is None or at < best[0]:
            best = (at, "ice check")
    elif state is _CHECKING and peer.checks:
        at = max(c.next_at for c in peer.checks.values())
        if best is None or at < best[0]:
            best = (at, "ice checks exhausted")
    return best


def _rank(check: _Check) -> tuple[int, float]:
    return KIND_RANK.get(check.candidate.kind, 9), check.rtt if check.rtt is not None else 1e9


def _ms(now: Instant) -> int:
    return int(now.unix * 1000)


def _norm(address: Sequence[object]) -> Address:
    host = str(address[0])
    if host.startswith("::ffff:"):
        host = host[7:]
    return host, int(str(address[1]))
