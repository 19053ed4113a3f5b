"""Which way a WireGuard peer's datagrams travel: a set of paths per peer and the current best.

The WireGuard session (keys, counters, timers) does not depend on the path: only the address
a datagram is sent to changes. So moving a peer from a router relay to direct UDP and back
breaks no flow inside the tunnel. This machine only decides *where*; the IO shell
(`umbranet.aio.wg_driver`) sends there.

Kinds of path, best first (`RANK`):

    direct   UDP to the endpoint the controller published        needs proof
    punched  a hole-punched candidate pair (NAT traversal)        needs proof
    turn     a TURN allocation (a standard relay)                 trusted once added
    relay    sealed datagrams through an Umbranet router's link   trusted once added

Rules of this file:
- A path that *needs proof* becomes usable only after an authenticated exchange on it: we
  sent on it (a probe or traffic) and, at most `deadline` later, a datagram the WireGuard
  machine authenticated arrived from it (`handle_authenticated`). Unauthenticated bytes
  prove nothing: the shell reports only what the machine accepted.
- A trusted path (a relay) is usable at once: traffic starts relayed without waiting.
- The current path is the best-ranked usable path; when none is usable but a path that needs
  proof exists, that one is used unproven (a plain WireGuard peer with only an endpoint).
- Upgrade: while the current path is not the best proven one, each unproven path is probed
  every `probe_interval` (backing off to `probe_max`); the shell probes by sending a
  WireGuard keepalive on that path. An authenticated datagram on an unproven path we have
  not sent on recently is answered with a probe at once, so both sides prove the path
  within about one and a half round trips; on a proven path, at most one answer per
  `probe_interval`, so an idle peer still proving it gets its reply.
- Fallback: a proven path we have sent on (`handle_sent`: something the peer answers, that
  is not a bare keepalive) without hearing anything authenticated for `deadline`
  (WireGuard's keepalive + rekey timeouts, 15 s: the peer answers data within 10 s) loses
  its proof; the current
  path then moves to the next usable one and the lost path is probed again (backing off).
  Silence while nothing is sent is not evidence: an idle path keeps its proof.
- The peer moved: an authenticated datagram on a worse path while the current proven path
  has been silent for `PEER_MOVED_AFTER` despite our sending means the peer lost the
  better path (often before we noticed: only one side may be sending); the current path
  loses its proof at once rather than after the whole `deadline`. The holdoff keeps a
  datagram still in flight on the relay during an upgrade from undoing it.
- `handle_network_change(now)` drops every proof and probes everything at once.
- Nothing here raises on peer input; `remove` of an unknown path is a no-op.

Known limit: WireGuard keepalives carry no nonce, so a one-way path (our datagrams lost, the
peer's arriving) can look proven; it then falls back after `deadline` and is re-probed with
backoff, so it costs at most one `deadline` of loss per backoff period.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from umbranet.clock import Deadline

__all__ = [
    "RANK",
    "RELAY_HOST_PREFIX",
    "Path",
    "PathChanged",
    "PathKind",
    "PathSet",
    "Probe",
    "relay_address",
    "relay_peer",
]

Address = tuple[str, int]

# A relayed path's address is not an IP endpoint: the shell recognises this prefix and hands
# the datagram to the router link, addressed to the peer's public key.
RELAY_HOST_PREFIX = "relay:"

DEFAULT_DEADLINE = 15.0  # KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
DEFAULT_PROBE_INTERVAL = 5.0
DEFAULT_PROBE_MAX = 60.0
# An answer probe is skipped when we sent on the path this recently (it already is one).
ANSWER_HOLDOFF = 1.0
PEER_MOVED_AFTER = 1.0


class PathKind(StrEnum):
    DIRECT = "direct"
    PUNCHED = "punched"
    TURN = "turn"
    RELAY = "relay"


RANK = {PathKind.DIRECT: 0, PathKind.PUNCHED: 1, PathKind.TURN: 2, PathKind.RELAY: 3}
_TRUSTED = frozenset({PathKind.TURN, PathKind.RELAY})


@dataclass(frozen=True, slots=True)
class Path:
    """One way to reach a peer: its kind and the address the shell sends to."""

    kind: PathKind
    address: Address

    @property
    def needs_proof(self) -> bool:
        return self.kind not in _TRUSTED


@dataclass(frozen=True, slots=True)
class PathChanged:
    """The current path of `peer` moved (`old` None: the first choice; `new` None: none left)."""

    peer: bytes
    old: Path | None
    new: Path | None
    reason: str


@dataclass(frozen=True, slots=True)
class Probe:
    """Send a WireGuard keepalive to `peer` on `path` (not on the current path)."""

    peer: bytes
    path: Path
    reason: str


@dataclass(slots=True)
class _Record:
    path: Path
    proven: bool = False
    last_rx: float | None = None
    last_tx: float | None = None
    # first send since the last authenticated receive: the silence clock of a proven path
    waiting_since: float | None = None
    next_probe: float | None = None
    backoff: float = DEFAULT_PROBE_INTERVAL


@dataclass(slots=True)
class _Out:
    events: deque[PathChanged] = field(default_factory=deque)
    probes: deque[Probe] = field(default_factory=deque)


def relay_address(peer: bytes) -> Address:
    """The pseudo-address of the relayed path to `peer` (its public key, hex)."""
    return (RELAY_HOST_PREFIX + peer.hex(), 0)


def relay_peer(address: Address) -> bytes | None:
    """The public key a relay pseudo-address names, or None for a real endpoint."""
    host = address[0]
    if not host.startswith(RELAY_HOST_PREFIX):
        return None
    try:
        key = bytes.fromhex(host[len(RELAY_HOST_PREFIX) :])
    except ValueError:
        return None
    return key if len(key) == 32 else None


class PathSet:
    """The paths to one peer. Inputs `add`/`remove`/`handle_*`; outputs `poll_*`."""

    def __init__(
        self,
        peer: bytes,
        *,
        deadline: float = DEFAULT_DEADLINE,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        probe_max: float = DEFAULT_PROBE_MAX,
    ) -> None:
        self.peer = peer
        self._deadline = deadline
        self._probe_interval = probe_interval
        self._probe_max = probe_max
        self._paths: dict[Address, _Record] = {}
        self._current: Path | None = None
        self._out = _Out()
        self.counters: dict[str, int] = {
            "upgrades": 0,
            "fallbacks": 0,
            "probes": 0,
            "proofs": 0,
        }

    # -- configuration -------------------------------------------------------------------

    def add(self, path: Path, now: float) -> None:
        """Add (or keep) a path; an unproven one is probed at once."""
        record = self._paths.get(path.address)
        if record is not None and record.path == path:
            return
        if record is not None and record.proven:
            # The same address under another kind (the view publishes the pair the probes
            # punched as the peer's endpoint): the proof belongs to the address, so it stays.
            record.path = path
            self._choose(now, "renamed")
            return
        record = _Record(path, backoff=self._probe_interval)
        if path.needs_proof:
            record.next_probe = now
        self._paths[path.address] = record
        self._choose(now, "added")

    def remove(self, address: Address, now: float) -> None:
        if self._paths.pop(address, None) is not None:
            self._choose(now, "removed")

    def paths(self) -> list[Path]:
        return [r.path for r in self._paths.values()]

    def has(self, address: Address) -> bool:
        return address in self._paths

    def proven(self, address: Address) -> bool:
        record = self._paths.get(address)
        return record is not None and record.proven

    @property
    def current(self) -> Path | None:
        return self._current

    # -- inputs --------------------------------------------------------------------------

    def handle_sent(self, address: Address, now: float) -> None:
        """We sent a datagram the peer will answer (data, a handshake) on this path."""
        record = self._paths.get(address)
        if record is None:
            return
        record.last_tx = now
        if record.waiting_since is None:
            record.waiting_since = now

    def handle_authenticated(self, address: Address, now: float) -> None:
        """The WireGuard machine accepted a datagram that arrived on this path."""
        record = self._paths.get(address)
        if record is None:
            return
        record.last_rx = now
        record.waiting_since = None
        self._peer_moved(record, now)
        if not record.path.needs_proof:
            return
        if record.proven:
            # The peer may still be proving it (its probe, or its traffic while idle here):
            # answer now and then, so an idle pair converges without waiting for traffic.
            if record.last_tx is None or now - record.last_tx >= self._probe_interval:
                self._probe(record, now, "answer")
            return
        sent = record.last_tx
        if sent is not None and now - sent <= self._deadline:
            record.proven = True
            record.backoff = self._probe_interval
            record.next_probe = None
            self.counters["proofs"] += 1
            self._choose(now, "proven")
        elif sent is None or now - sent >= ANSWER_HOLDOFF:
            self._probe(record, now, "answer")

    def handle_network_change(self, now: float) -> None:
        """Local addresses changed: no proof survives, probe every path now."""
        for record in self._paths.values():
            if record.path.needs_proof:
                record.proven = False
                record.waiting_since = None
                record.backoff = self._probe_interval
                record.next_probe = now
        self._choose(now, "network_change")

    def handle_timeout(self, now: float) -> None:
        for record in self._paths.values():
            if (
                record.proven
                and record.waiting_since is not None
                and now - record.waiting_since >= self._deadline
            ):
                self._lose_proof(record, now)
                self._choose(now, f"{record.path.kind}_silent")
        if self._should_probe():
            for record in self._paths.values():
                if record.next_probe is not None and record.next_probe <= now:
                    self._probe(record, now, "upgrade")
                    record.next_probe = now + record.backoff
                    record.backoff = min(record.backoff * 2, self._probe_max)

    # -- outputs -------------------------------------------------------------------------

    def poll_event(self) -> PathChanged | None:
        return self._out.events.popleft() if self._out.events else None

    def poll_probe(self) -> Probe | None:
        return self._out.probes.popleft() if self._out.probes else None

    def poll_timeout(self) -> Deadline | None:
        best: Deadline | None = None
        probing = self._should_probe()
        for record in self._paths.values():
            if record.proven and record.waiting_since is not None:
                at = record.waiting_since + self._deadline
                if best is None or at < best.at:
                    best = Deadline(at, f"path_silent:{record.path.kind}")
            probe_at = record.next_probe if probing else None
            if probe_at is not None and (best is None or probe_at < best.at):
                best = Deadline(probe_at, f"path_probe:{record.path.kind}")
        return best

    def statistics(self) -> dict[str, object]:
        current = self._current
        return {
            "current": None if current is None else current.kind.value,
            "paths": [
                {
                    "kind": r.path.kind.value,
                    "address": _show(r.path.address),
                    "proven": r.proven,
                    "last_rx": r.last_rx,
                }
                for r in self._paths.values()
            ],
            **self.counters,
        }

    # -- internals -----------------------------------------------------------------------

    def _usable(self, record: _Record) -> bool:
        return record.proven or not record.path.needs_proof

    def _best(self) -> Path | None:
        usable = [r for r in self._paths.values() if self._usable(r)]
        pool = usable or list(self._paths.values())
        if not pool:
            return None
        return min(pool, key=lambda r: RANK[r.path.kind]).path

    def _should_probe(self) -> bool:
        """Probing is worth it while some unproven path would beat the current one."""
        current = self._current
        if current is None:
            return False
        rank = RANK[current.kind]
        current_record = self._paths.get(current.address)
        current_proven = current_record is not None and self._usable(current_record)
        return any(
            r.path.needs_proof and not r.proven and (RANK[r.path.kind] < rank or not current_proven)
            for r in self._paths.values()
        )

    def _peer_moved(self, record: _Record, now: float) -> None:
        current = self._current
        if current is None or RANK[record.path.kind] <= RANK[current.kind]:
            return
        best = self._paths.get(current.address)
        if (
            best is not None
            and best.proven
            and best.waiting_since is not None
            and now - best.waiting_since >= PEER_MOVED_AFTER
        ):
            self._lose_proof(best, now)
            self._choose(now, "peer_moved")

    def _lose_proof(self, record: _Record, now: float) -> None:
        record.proven = False
        record.waiting_since = None
        record.next_probe = now + record.backoff
        record.backoff = min(record.backoff * 2, self._probe_max)

    def _probe(self, record: _Record, now: float, reason: str) -> None:
        # A probe is a keepalive, which nothing answers: it starts no silence clock.
        self.counters["probes"] += 1
        self._out.probes.append(Probe(self.peer, record.path, reason))
        record.last_tx = now

    def _choose(self, now: float, reason: str) -> None:
        new = self._best()
        old = self._current
        if new == old:
            return
        self._current = new
        if old is not None and new is not None:
            if RANK[new.kind] < RANK[old.kind]:
                self.counters["upgrades"] += 1
            elif reason.endswith("_silent") or reason == "peer_moved":
                self.counters["fallbacks"] += 1
        self._out.events.append(PathChanged(self.peer, old, new, reason))


def _show(address: Address) -> str:
    peer = relay_peer(address)
    if peer is not None:
        return "relay"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
