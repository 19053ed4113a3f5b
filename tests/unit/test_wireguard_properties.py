"""Properties of the WireGuard machine, checked with hypothesis.

- The anti-replay window against a reference model: a set of seen counters and the rule
  "below the limit, not seen, and above the highest seen or at most WINDOW below it".
- Garbage datagrams of any length and type never raise and are each counted once.
- Rekeying across REKEY_AFTER_TIME / REJECT_AFTER_TIME with random clock steps and traffic
  both ways: every packet arrives and no side ever refuses a packet (so no side ever sealed
  with a key the other considers expired).
- Rekeying across REKEY_AFTER_MESSAGES and REJECT_AFTER_MESSAGES.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.wireguard_harness import A_ADDR, A_IP, B_ADDR, B_IP, ipv4_packet, key, make_pair
from umbranet.proto.wireguard.crypto import public_key
from umbranet.proto.wireguard.messages import TYPE_DATA, TYPE_INITIATION
from umbranet.proto.wireguard.replay import REJECT_AFTER_MESSAGES, WINDOW, ReplayWindow
from umbranet.proto.wireguard.timers import REKEY_AFTER_MESSAGES


class ReplayWindowMatchesTheModel(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.window = ReplayWindow()
        self.seen: set[int] = set()

    def _model_accepts(self, counter: int) -> bool:
        last = max(self.seen, default=0)
        return (
            counter < REJECT_AFTER_MESSAGES
            and counter not in self.seen
            and (counter > last or last - counter <= WINDOW)
        )

    def _offer(self, counter: int) -> None:
        expected = self._model_accepts(counter)
        assert self.window.check(counter) == expected
        assert self.window.accept(counter) == expected
        if expected:
            self.seen.add(counter)

    @rule(delta=st.integers(-2200, 2200))
    def near_the_top(self, delta: int) -> None:
        self._offer(max(0, max(self.seen, default=0) + delta))

    @rule(offset=st.integers(-2, 2))
    def at_the_window_edge(self, offset: int) -> None:
        self._offer(max(0, max(self.seen, default=0) - WINDOW + offset))

    @rule(delta=st.integers(1, 10_000))
    def jump(self, delta: int) -> None:
        self._offer(max(self.seen, default=0) + delta)

    @rule(counter=st.integers(0, 2**64 - 1))
    def anywhere(self, counter: int) -> None:
        self._offer(counter)

    @rule(data=st.data())
    def replay_a_seen_one(self, data: st.DataObject) -> None:
        if self.seen:
            self._offer(data.draw(st.sampled_from(sorted(self.seen))))

    @invariant()
    def replays_never_pass(self) -> None:
        for counter in list(self.seen)[:20]:
            assert not self.window.check(counter)


TestReplayWindow = ReplayWindowMatchesTheModel.TestCase
TestReplayWindow.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def test_the_window_edges() -> None:
    window = ReplayWindow()
    assert window.accept(WINDOW + 5000)
    assert window.accept(5000) and not window.accept(5000)  # exactly WINDOW below: in
    assert not window.check(4999)  # one further: out
    assert not window.check(REJECT_AFTER_MESSAGES)
    assert window.accept(REJECT_AFTER_MESSAGES - 1)


_types = st.sampled_from([1, 2, 3, 4])
_garbage = st.one_of(
    st.binary(max_size=200),
    st.tuples(_types, st.binary(max_size=200)).map(lambda t: bytes([t[0], 0, 0, 0]) + t[1]),
    st.tuples(_types, st.sampled_from([28, 60, 88, 144])).flatmap(
        lambda t: st.binary(min_size=t[1], max_size=t[1]).map(
            lambda rest, kind=t[0]: bytes([kind, 0, 0, 0]) + rest
        )
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_garbage, min_size=1, max_size=10), st.data(), st.booleans())
def test_garbage_never_raises_and_is_counted_once(
    datagrams: list[bytes], data: st.DataObject, pending: bool
) -> None:
    pair = make_pair()
    pair.a.send_packet(ipv4_packet(A_IP, B_IP, b"before"), pair.clock.now())
    pair.pump()
    captured = [d for d, _, _ in pair.wire]
    if pending:
        # A second peer whose handshake is still open, so responses and cookie replies have
        # an index to name.
        pair.a.add_peer(
            public_key(key("c")), endpoint=("198.18.0.3", 1), allowed_ips=["100.64.0.3/32"]
        )
        pair.a.send_packet(ipv4_packet(A_IP, "100.64.0.3", b"pending"), pair.clock.now())
        captured.append(pair.a.poll_transmit()[0])  # type: ignore[index]
    # Real messages with a flipped bit are garbage too, and the hardest kind.
    for _ in range(data.draw(st.integers(0, 3))):
        original = bytearray(data.draw(st.sampled_from(captured)))
        bit = data.draw(st.integers(0, len(original) * 8 - 1))
        original[bit // 8] ^= 1 << (bit % 8)
        datagrams.append(bytes(original))
    for datagram in datagrams:
        device = data.draw(st.sampled_from([pair.a, pair.b]))
        before = sum(device.statistics()["drops"].values())  # type: ignore[attr-defined]
        device.handle_datagram(datagram, ("198.18.7.7", 7), pair.clock.now())
        after = sum(device.statistics()["drops"].values())  # type: ignore[attr-defined]
        assert after == before + 1
        assert device.poll_transmit() is None
    # Nothing harmed the session.
    pair.a.send_packet(ipv4_packet(A_IP, B_IP, b"after"), pair.clock.now())
    pair.pump()
    assert pair.received(B_ADDR)[-1] == ipv4_packet(A_IP, B_IP, b"after")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 70), st.booleans()), min_size=1, max_size=25))
def test_rekey_by_time_never_loses_a_packet(steps: list[tuple[float, bool]]) -> None:
    pair = make_pair(seed=3)
    sent = {A_ADDR: 0, B_ADDR: 0}
    for i, (dt, from_a) in enumerate(steps):
        pair.run(dt)
        device, src, dst, to = (
            (pair.a, A_IP, B_IP, B_ADDR) if from_a else (pair.b, B_IP, A_IP, A_ADDR)
        )
        device.send_packet(ipv4_packet(src, dst, f"p{i}".encode()), pair.clock.now())
        pair.pump()
        sent[to] += 1
        assert len(pair.received(to)) == sent[to]
        assert pair.received(to)[-1] == ipv4_packet(src, dst, f"p{i}".encode())
    assert pair.a.statistics()["drops"] == {}
    assert pair.b.statistics()["drops"] == {}


@settings(max_examples=20, deadline=None)
@given(st.integers(-3, 3), st.integers(1, 5))
def test_rekey_after_messages_across_the_boundary(offset: int, count: int) -> None:
    pair = make_pair()
    pair.a.send_packet(ipv4_packet(A_IP, B_IP, b"start"), pair.clock.now())
    pair.pump()
    # White-box: jump the send counter near the limit (2**60 real packets are out of reach).
    peer = pair.a._peers[public_key(key("b"))]
    assert peer.current is not None
    peer.current.send_counter = REKEY_AFTER_MESSAGES + offset
    pair.clock.advance(6)  # past REKEY_TIMEOUT since the first handshake: a new one may start
    pair.wire.clear()
    for i in range(count):
        pair.a.send_packet(ipv4_packet(A_IP, B_IP, bytes([i])), pair.clock.now())
        pair.pump()
    highest = max(
        int.from_bytes(d[8:16], "little")
        for d, s, _ in pair.wire
        if s == A_ADDR and d[0] == TYPE_DATA and len(d) > 32
    )
    initiations = [d for d, s, _ in pair.wire if s == A_ADDR and d[0] == TYPE_INITIATION]
    # A new handshake starts exactly when a packet went out with counter REKEY_AFTER_MESSAGES
    # or more; every packet arrives either way.
    assert len(initiations) == (1 if highest >= REKEY_AFTER_MESSAGES else 0)
    assert len(pair.received(B_ADDR)) == 1 + count


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4))
def test_a_key_is_never_used_past_reject_after_messages(count: int) -> None:
    pair = make_pair()
    pair.a.send_packet(ipv4_packet(A_IP, B_IP, b"start"), pair.clock.now())
    pair.pump()
    peer = pair.a._peers[public_key(key("b"))]
    assert peer.current is not None
    old = peer.current
    old.send_counter = REJECT_AFTER_MESSAGES - 1
    for i in range(count):
        pair.a.send_packet(ipv4_packet(A_IP, B_IP, bytes([i])), pair.clock.now())
        pair.pump()
    # The rekey handshake waits out REKEY_TIMEOUT since the first; packets wait with it.
    pair.run(6)
    assert old.send_counter == REJECT_AFTER_MESSAGES
    assert len(pair.received(B_ADDR)) == 1 + count
    assert pair.b.statistics()["drops"] == {}


def test_a_burst_of_staged_packets_stops_at_reject_after_messages() -> None:
    pair = make_pair()
    pair.a.send_packet(ipv4_packet(A_IP, B_IP, b"start"), pair.clock.now())
    pair.pump()
    pair.clock.advance(6)
    peer = pair.a._peers[public_key(key("b"))]
    assert peer.current is not None
    old = peer.current
    old.send_counter = REJECT_AFTER_MESSAGES - 2
    peer.staged.extend(ipv4_packet(A_IP, B_IP, bytes([i])) for i in range(3))  # white-box
    pair.a.send_packet(ipv4_packet(A_IP, B_IP, b"last"), pair.clock.now())
    pair.pump()
    assert old.send_counter == REJECT_AFTER_MESSAGES
    assert len(pair.received(B_ADDR)) == 1 + 4
    assert pair.b.statistics()["drops"] == {}
