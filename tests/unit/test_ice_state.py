"""A hypothesis state machine over two probe agents on a lossy, partitionable network:
whatever the order of deliveries, losses, outages, garbage and time, the invariants hold."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from umbranet.clock import Instant
from umbranet.proto import probe
from umbranet.proto.ice import Candidate, PathLost, PathSelected, PeerState, ProbeAgent
from umbranet.proto.wireguard.crypto import public_key

EPOCH = datetime(2026, 12, 4, tzinfo=UTC)
A, B = ("198.18.1.2", 51820), ("198.18.2.2", 51820)
DECOY = ("198.18.9.9", 9)  # announced by B but nobody is there


def at(t: float) -> Instant:
    return Instant(t, EPOCH + timedelta(seconds=t))


class TwoPeers(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0
        ka, kb = random.Random(1).randbytes(32), random.Random(2).randbytes(32)
        self.pa, self.pb = public_key(ka), public_key(kb)
        self.a = ProbeAgent(ka, self.pa, random_bytes=random.Random(3).randbytes, keepalive=2.0,
                            tries=5, retry_after=4.0)  # fmt: skip
        self.b = ProbeAgent(kb, self.pb, random_bytes=random.Random(4).randbytes, keepalive=2.0,
                            tries=5, retry_after=4.0)  # fmt: skip
        self.a.set_peer(self.pb, [Candidate("host", B), Candidate("srflx", DECOY)], at(0))
        self.b.set_peer(self.pa, [Candidate("host", A)], at(0))
        self.queue: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []
        self.up = True
        self.events: list[object] = []

    def _collect(self) -> None:
        for src, agent in ((A, self.a), (B, self.b)):
            while (out := agent.poll_transmit()) is not None:
                self.queue.append((out[0], src, out[1]))
            while (event := agent.poll_event()) is not None:
                self.events.append(event)

    @rule(steps=st.integers(1, 20))
    def deliver(self, steps: int) -> None:
        self._collect()
        for _ in range(min(steps, len(self.queue))):
            data, src, dst = self.queue.pop(0)
            target = {A: self.a, B: self.b}.get(dst)
            if target is not None and self.up:
                assert target.handle_datagram(data, src, at(self.t))
        self._collect()

    @rule()
    def lose_one(self) -> None:
        self._collect()
        if self.queue:
            self.queue.pop(0)

    @rule(seconds=st.floats(0.01, 3.0))
    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.a.handle_timeout(at(self.t))
        self.b.handle_timeout(at(self.t))
        self._collect()

    @rule()
    def partition(self) -> None:
        self.up = not self.up

    @rule(data=st.binary(max_size=80))
    def garbage(self, data: bytes) -> None:
        assert self.a.handle_datagram(probe.MAGIC + data, B, at(self.t))
        assert self.a.poll_transmit() is None  # nothing unauthenticated is answered

    @invariant()
    def paths_are_real_and_states_consistent(self) -> None:
        for agent, peer, real in ((self.a, self.pb, B), (self.b, self.pa, A)):
            path = agent.path(peer)
            assert path in (None, real)  # never the decoy nobody answers at
            state = agent.state(peer)
            assert state in set(PeerState)
            assert (path is not None) == (state is PeerState.CONNECTED)

    @invariant()
    def selections_only_name_real_addresses(self) -> None:
        for event in self.events:
            if isinstance(event, PathSelected | PathLost):
                assert event.address in (A, B)


TwoPeers.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_two_peers = TwoPeers.TestCase
