"""The path machine: start relayed, upgrade to direct on proof, fall back when direct is silent.

A hypothesis state machine drives one `PathSet` with random inputs and checks its choice
against the rules in the module doc; two `PathSet`s over a toy network check the whole
exchange (both sides converge on direct, and return to the relay when direct dies).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from umbranet.proto.paths import (
    RANK,
    Path,
    PathKind,
    PathSet,
    relay_address,
    relay_peer,
)

PEER_A = bytes(range(32))
PEER_B = bytes(range(1, 33))
DIRECT = Path(PathKind.DIRECT, ("198.18.0.2", 51820))
PUNCHED = Path(PathKind.PUNCHED, ("203.0.113.9", 40000))
RELAY = Path(PathKind.RELAY, relay_address(PEER_B))
ALL = [DIRECT, PUNCHED, RELAY]


def test_relay_address_round_trip_and_real_endpoints_are_not_relays() -> None:
    assert relay_peer(relay_address(PEER_B)) == PEER_B
    assert relay_peer(("198.18.0.2", 51820)) is None
    assert relay_peer(("relay:zz", 0)) is None
    assert relay_peer(("relay:" + "00" * 5, 0)) is None


def test_starts_relayed_at_once_and_probes_direct() -> None:
    paths = PathSet(PEER_B)
    paths.add(DIRECT, 0.0)
    paths.add(RELAY, 0.0)
    assert paths.current == RELAY
    paths.handle_timeout(0.0)
    probe = paths.poll_probe()
    assert probe is not None and probe.path == DIRECT


def test_unauthenticated_or_unprompted_traffic_proves_nothing() -> None:
    paths = PathSet(PEER_B)
    paths.add(RELAY, 0.0)
    paths.add(DIRECT, 0.0)
    # an authenticated datagram we did not ask for is answered with a probe, not trusted
    paths.handle_authenticated(DIRECT.address, 0.5)
    assert paths.current == RELAY
    answer = paths.poll_probe()
    assert answer is not None and answer.reason == "answer"
    # the peer's reply to our answer is the exchange that proves it
    paths.handle_authenticated(DIRECT.address, 0.6)
    assert paths.current == DIRECT


def test_direct_alone_is_used_unproven() -> None:
    paths = PathSet(PEER_B)
    paths.add(DIRECT, 0.0)
    assert paths.current == DIRECT
    event = paths.poll_event()
    assert event is not None and event.old is None and event.new == DIRECT


def test_idle_direct_path_keeps_its_proof() -> None:
    paths = _proven_direct()
    paths.handle_timeout(1000.0)
    assert paths.current == DIRECT


def test_silent_direct_falls_back_then_reprobes_with_backoff() -> None:
    paths = _proven_direct()
    paths.handle_sent(DIRECT.address, 10.0)
    assert paths.poll_timeout() is not None
    paths.handle_timeout(24.9)
    assert paths.current == DIRECT
    paths.handle_timeout(25.0)
    assert paths.current == RELAY
    assert paths.counters["fallbacks"] == 1
    events = _drain_events(paths)
    assert events[-1] == ("direct", "relay", "direct_silent")
    deadline = paths.poll_timeout()
    assert deadline is not None and deadline.at == 30.0  # probe after the base interval
    paths.handle_timeout(30.0)
    assert _drain_probes(paths) == [DIRECT]
    deadline = paths.poll_timeout()
    assert deadline is not None and deadline.at == 40.0  # then backing off


def test_peer_arriving_on_the_relay_while_direct_is_silent_means_fall_back_now() -> None:
    paths = _proven_direct()
    relay = Path(PathKind.RELAY, relay_address(PEER_B))
    # a relayed datagram while we just sent on direct (an upgrade's stragglers): no change
    paths.handle_sent(DIRECT.address, 10.0)
    paths.handle_authenticated(relay.address, 10.5)
    assert paths.current == DIRECT
    # but once direct has been silent for a second while we send, the peer has moved
    paths.handle_authenticated(relay.address, 11.0)
    assert paths.current == relay
    assert _drain_events(paths)[-1] == ("direct", "relay", "peer_moved")
    assert paths.counters["fallbacks"] == 1


def test_network_change_drops_proof() -> None:
    paths = _proven_direct()
    paths.handle_network_change(50.0)
    assert paths.current == RELAY
    paths.handle_timeout(50.0)
    assert _drain_probes(paths) == [DIRECT]


def _proven_direct() -> PathSet:
    paths = PathSet(PEER_B)
    paths.add(RELAY, 0.0)
    paths.add(DIRECT, 0.0)
    paths.handle_timeout(0.0)
    assert _drain_probes(paths) == [DIRECT]
    paths.handle_authenticated(DIRECT.address, 0.1)
    assert paths.current == DIRECT
    assert paths.counters["upgrades"] == 1
    return paths


def _drain_probes(paths: PathSet) -> list[Path]:
    out = []
    while (probe := paths.poll_probe()) is not None:
        out.append(probe.path)
    return out


def _drain_events(paths: PathSet) -> list[tuple[str | None, str | None, str]]:
    out = []
    while (event := paths.poll_event()) is not None:
        out.append(
            (
                None if event.old is None else event.old.kind.value,
                None if event.new is None else event.new.kind.value,
                event.reason,
            )
        )
    return out


# -- two sides over a toy network --------------------------------------------------------


class ToyNet:
    """A and B each with a PathSet towards the other; direct may be cut. Relay always works.

    A datagram on a path arrives one step later and counts as authenticated (the WireGuard
    machine's job, not this one's)."""

    def __init__(self) -> None:
        self.a = PathSet(PEER_B)
        self.b = PathSet(PEER_A)
        self.a.add(Path(PathKind.RELAY, relay_address(PEER_B)), 0.0)
        self.b.add(Path(PathKind.RELAY, relay_address(PEER_A)), 0.0)
        self.a.add(Path(PathKind.DIRECT, ("b", 1)), 0.0)
        self.b.add(Path(PathKind.DIRECT, ("a", 1)), 0.0)
        self.direct_up = True
        self.now = 0.0
        self.relayed = 0

    def step(self, traffic: bool = True) -> None:
        self.now += 0.25
        for me, other, my_addr in ((self.a, self.b, ("a", 1)), (self.b, self.a, ("b", 1))):
            me.handle_timeout(self.now)
            # probes are keepalives (the machine records them); traffic is answered data
            sends = [p.path for p in iter(me.poll_probe, None)]
            if traffic and me.current is not None:
                sends.append(me.current)
                me.handle_sent(me.current.address, self.now)
            for path in sends:
                if path.kind is PathKind.RELAY:
                    self.relayed += 1
                    other.handle_authenticated(relay_address(other.peer), self.now)
                elif self.direct_up:
                    other.handle_authenticated(my_addr, self.now)
            # answers queued by receiving are sent on the next step


def test_both_sides_upgrade_then_fall_back_and_recover() -> None:
    net = ToyNet()
    assert net.a.current is not None and net.a.current.kind is PathKind.RELAY
    for _ in range(8):
        net.step()
    assert net.a.current == Path(PathKind.DIRECT, ("b", 1))
    assert net.b.current == Path(PathKind.DIRECT, ("a", 1))
    net.direct_up = False
    for _ in range(int(16 / 0.25)):
        net.step()
    assert net.a.current == _relay(net.a)
    assert net.b.current == _relay(net.b)
    before = net.relayed
    net.step()
    assert net.relayed > before  # traffic flows on the relay meanwhile
    net.direct_up = True
    for _ in range(int(130 / 0.25)):
        net.step()
    assert net.a.current == Path(PathKind.DIRECT, ("b", 1))
    assert net.b.current == Path(PathKind.DIRECT, ("a", 1))


def test_an_idle_pair_converges_on_direct_by_probes_alone_and_stays() -> None:
    net = ToyNet()
    for _ in range(40):
        net.step(traffic=False)
    assert net.a.current == Path(PathKind.DIRECT, ("b", 1))
    assert net.b.current == Path(PathKind.DIRECT, ("a", 1))
    for _ in range(400):  # 100 s idle: no fallback, since nothing answered was sent
        net.step(traffic=False)
    assert net.a.counters["fallbacks"] == 0 and net.b.counters["fallbacks"] == 0


def test_blocked_direct_stays_relayed() -> None:
    net = ToyNet()
    net.direct_up = False
    for _ in range(400):
        net.step()
    assert net.a.current == _relay(net.a)
    assert net.a.counters["upgrades"] == 0


def _relay(paths: PathSet) -> Path:
    return Path(PathKind.RELAY, relay_address(paths.peer))


# -- the state machine --------------------------------------------------------------------


class PathMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.paths = PathSet(PEER_B)
        self.now = 0.0
        self.present: set[Path] = set()
        self.last_tx: dict[Path, float] = {}

    @rule(path=st.sampled_from(ALL))
    def add(self, path: Path) -> None:
        self.paths.add(path, self.now)
        self.present.add(path)

    @rule(path=st.sampled_from(ALL))
    def remove(self, path: Path) -> None:
        self.paths.remove(path.address, self.now)
        self.present.discard(path)
        self.last_tx.pop(path, None)

    @rule(dt=st.floats(0.0, 40.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.paths.handle_timeout(self.now)
        for probe in iter(self.paths.poll_probe, None):
            assert probe.path in self.present
            assert probe.path.needs_proof
            self.last_tx[probe.path] = self.now

    @rule(path=st.sampled_from(ALL))
    def send(self, path: Path) -> None:
        self.paths.handle_sent(path.address, self.now)
        if path in self.present:
            self.last_tx[path] = self.now

    @rule(path=st.sampled_from(ALL))
    def receive(self, path: Path) -> None:
        was_proven = self.paths.proven(path.address)
        sent = self.last_tx.get(path)
        self.paths.handle_authenticated(path.address, self.now)
        if self.paths.proven(path.address) and not was_proven:
            # proof only by an exchange: we sent on it within the deadline before
            assert sent is not None and self.now - sent <= 15.0
        for probe in iter(self.paths.poll_probe, None):
            self.last_tx[probe.path] = self.now

    @rule()
    def network_change(self) -> None:
        self.paths.handle_network_change(self.now)

    @invariant()
    def current_is_best_usable(self) -> None:
        current = self.paths.current
        if not self.present:
            assert current is None
            return
        assert current in self.present
        usable = [p for p in self.present if not p.needs_proof or self.paths.proven(p.address)]
        pool = usable or list(self.present)
        assert RANK[current.kind] == min(RANK[p.kind] for p in pool)

    @invariant()
    def timeout_is_not_in_the_past_forever(self) -> None:
        # every deadline it names is acted on: after handle_timeout at it, it moves on
        deadline = self.paths.poll_timeout()
        if deadline is not None and deadline.at <= self.now:
            self.paths.handle_timeout(self.now)
            for probe in iter(self.paths.poll_probe, None):
                self.last_tx[probe.path] = self.now
            after = self.paths.poll_timeout()
            assert after is None or after.at > self.now


TestPathMachine = PathMachine.TestCase
TestPathMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_a_proven_address_renamed_by_the_view_keeps_its_proof() -> None:
    """The probes punch a pair; the next view publishes that address as the peer's endpoint
    (direct). The proof belongs to the address: the peer stays off the relay, and the path
    is reported under the view's kind."""
    punched = Path(PathKind.PUNCHED, DIRECT.address)
    paths = PathSet(PEER_B)
    paths.add(RELAY, 0.0)
    paths.add(punched, 0.0)
    paths.handle_sent(punched.address, 0.0)
    paths.handle_authenticated(punched.address, 0.1)
    assert paths.current == punched
    paths.add(DIRECT, 1.0)
    assert paths.proven(DIRECT.address) and paths.current == DIRECT
    assert paths.counters["fallbacks"] == 0
    # an unproven record, by contrast, is replaced and probed afresh
    other = PathSet(PEER_B)
    other.add(RELAY, 0.0)
    other.add(punched, 0.0)
    other.add(DIRECT, 1.0)
    assert not other.proven(DIRECT.address) and other.current == RELAY
