"""Connectivity checks (proto/ice.py + proto/probe.py) over a simulated network with NATs."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.clock import Instant
from umbranet.proto import probe
from umbranet.proto.ice import (
    Candidate,
    DirectFailed,
    PathLost,
    PathSelected,
    PeerState,
    ProbeAgent,
    classify_mapping,
    host_candidates,
)
from umbranet.proto.stun import BindingResult
from umbranet.proto.wireguard.crypto import public_key

EPOCH = datetime(2026, 12, 4, tzinfo=UTC)


def at(t: float) -> Instant:
    return Instant(t, EPOCH + timedelta(seconds=t))


def keypair(seed: int) -> tuple[bytes, bytes]:
    private = random.Random(seed).randbytes(32)
    return private, public_key(private)


@dataclass
class Nat:
    """A NAT in front of one host: `mapping` "eim" keeps one public port per inside socket,
    "random" a new one per destination; filtering lets in only replies to what went out."""

    public_ip: str
    mapping: str
    block_udp: bool = False
    ports: dict[tuple[str, int, tuple[str, int]], int] = field(default_factory=dict)
    next_port: int = 20000

    def outbound(self, src: tuple[str, int], dst: tuple[str, int]) -> tuple[str, int] | None:
        if self.block_udp:
            return None
        key = (src[0], src[1], dst if self.mapping == "random" else ("*", 0))
        if key not in self.ports:
            self.next_port += 7
            self.ports[key] = self.next_port
        return self.public_ip, self.ports[key]

    def inbound(self, src: tuple[str, int], public_port: int) -> tuple[str, int] | None:
        if self.block_udp:
            return None
        for (ip, port, dst), mapped in self.ports.items():
            if mapped != public_port:
                continue
            # address-and-port-dependent filtering: only from where we sent
            if self.mapping == "random" and dst == src:
                return ip, port
            if self.mapping == "eim" and any(
                d == src and m == public_port for (_, _, d), m in self._sent.items()
            ):
                return ip, port
        return None

    _sent: dict[tuple[str, int, tuple[str, int]], int] = field(default_factory=dict)

    def record(self, src: tuple[str, int], dst: tuple[str, int], port: int) -> None:
        self._sent[(src[0], src[1], dst)] = port


@dataclass
class Host:
    agent: ProbeAgent
    local: tuple[str, int]
    nat: Nat | None

    def candidates(self) -> list[Candidate]:
        """What this host would announce: its host address and, if STUN got through, the
        server-reflexive one."""
        if self.nat is None:
            return [Candidate("host", self.local)]
        mapped = self.nat.outbound(self.local, ("198.18.0.1", 3478))
        if mapped is None:
            return [Candidate("host", self.local)]
        self.nat.record(self.local, ("198.18.0.1", 3478), mapped[1])
        return [Candidate("host", self.local), Candidate("srflx", mapped)]


class Net:
    def __init__(self, hosts: list[Host], drop: float = 0.0, seed: int = 0) -> None:
        self.hosts = hosts
        self.rng = random.Random(seed)
        self.drop = drop
        self.down = False

    def deliver_from(self, host: Host, now: Instant) -> None:
        while (out := host.agent.poll_transmit()) is not None:
            data, dst = out
            if self.down or self.rng.random() < self.drop:
                continue
            src = host.local
            if host.nat is not None:
                mapped = host.nat.outbound(host.local, dst)
                if mapped is None:
                    continue
                host.nat.record(host.local, dst, mapped[1])
                src = mapped
            for other in self.hosts:
                if other is host:
                    continue
                if other.nat is None and other.local == dst:
                    other.agent.handle_datagram(data, src, now)
                elif other.nat is not None and other.nat.public_ip == dst[0]:
                    inside = other.nat.inbound(src, dst[1])
                    if inside == other.local:
                        other.agent.handle_datagram(data, src, now)

    def run(self, until: float, start: float = 0.0) -> list[tuple[int, object]]:
        events: list[tuple[int, object]] = []
        t = start
        for _ in range(100_000):
            for host in self.hosts:
                self.deliver_from(host, at(t))
            for i, host in enumerate(self.hosts):
                while (e := host.agent.poll_event()) is not None:
                    events.append((i, e))
            deadlines = [d.at for h in self.hosts if (d := h.agent.poll_timeout()) is not None]
            if not deadlines or min(deadlines) > until:
                break
            t = max(t, min(deadlines))
            for host in self.hosts:
                host.agent.handle_timeout(at(t))
        return events


def pair(nat_a: Nat | None, nat_b: Nat | None, **kw: float) -> tuple[Host, Host, bytes, bytes]:
    (pa, ka), (pb, kb) = keypair(1), keypair(2)
    a = Host(
        ProbeAgent(pa, ka, random_bytes=random.Random(3).randbytes, **kw),
        ("198.19.1.2", 51820),
        nat_a,
    )  # type: ignore[arg-type]
    b = Host(
        ProbeAgent(pb, kb, random_bytes=random.Random(4).randbytes, **kw),
        ("198.19.2.2", 51820),
        nat_b,
    )  # type: ignore[arg-type]
    if nat_a is None:
        a.local = ("198.18.1.2", 51820)
    if nat_b is None:
        b.local = ("198.18.2.2", 51820)
    a.agent.set_peer(kb, b.candidates(), at(0))
    b.agent.set_peer(ka, a.candidates(), at(0))
    return a, b, ka, kb


def selected(events: list[tuple[int, object]], side: int) -> list[PathSelected]:
    return [e for i, e in events if i == side and isinstance(e, PathSelected)]


@pytest.mark.parametrize(
    ("kind_a", "kind_b", "direct"),
    [
        ("open", "open", True),
        ("easy", "open", True),
        ("easy", "easy", True),
        ("hard", "open", True),  # through the peer-reflexive candidate
        ("hard", "hard", False),
        ("hard", "easy", False),
        ("blocked", "open", False),
    ],
)
def test_matrix_on_simulated_nats(kind_a: str, kind_b: str, direct: bool) -> None:
    def nat(kind: str, ip: str) -> Nat | None:
        return {
            "open": None,
            "easy": Nat(ip, "eim"),
            "hard": Nat(ip, "random"),
            "blocked": Nat(ip, "eim", block_udp=True),
        }[kind]

    a, b, _, _ = pair(nat(kind_a, "198.18.10.1"), nat(kind_b, "198.18.20.1"))
    events = Net([a, b]).run(until=8.0)
    if direct:
        assert selected(events, 0) and selected(events, 1)
        assert a.agent.state(b.agent._public) is PeerState.CONNECTED
    else:
        assert not selected(events, 0) and not selected(events, 1)
        failed = [e for _, e in events if isinstance(e, DirectFailed)]
        assert len(failed) == 2 and failed[0].reason == "no_candidate_answered"


def test_keepalive_loss_reports_path_lost_then_direct_failed() -> None:
    a, b, _, kb = pair(None, None, keepalive=1.0, dead_after=2, tries=5, interval=0.2)
    net = Net([a, b])
    events = net.run(until=2.0)
    assert selected(events, 0)
    net.down = True
    events = net.run(until=12.0, start=2.0)
    lost = [e for i, e in events if i == 0 and isinstance(e, PathLost)]
    assert lost and lost[0].reason == "keepalive_timeout"
    assert any(isinstance(e, DirectFailed) for i, e in events if i == 0)
    assert a.agent.path(kb) is None
    net.down = False
    events = net.run(until=60.0, start=12.0)  # re-probed after retry_after
    assert selected(events, 0)


def test_unknown_forged_replayed_and_stale_probes_get_no_answer() -> None:
    (pa, ka), (pb, kb), (pm, km) = keypair(1), keypair(2), keypair(9)
    agent = ProbeAgent(pa, ka, random_bytes=random.Random(5).randbytes)
    agent.set_peer(kb, [], at(0))
    src = ("198.18.7.7", 1000)
    # a stranger's ping: its key id is unknown
    stranger = ProbeAgent(pm, km, random_bytes=random.Random(6).randbytes)
    stranger.set_peer(ka, [Candidate("host", ("198.18.1.1", 1))], at(0))
    stranger.handle_timeout(at(0))
    data, _ = stranger.poll_transmit() or (b"", None)
    assert agent.handle_datagram(data, src, at(0))
    assert agent.poll_transmit() is None
    # a real ping from b, then its replay, then a forged copy, then a stale one
    key = probe.pair_key(pb, kb, ka)
    ping = probe.seal_probe(
        key,
        probe.key_id(kb),
        probe.PING,
        txid=b"t" * 12,
        sent_ms=1000 * int(at(1).unix),
        nonce=b"n" * 12,
    )
    assert agent.handle_datagram(ping, src, at(1))
    assert agent.poll_transmit() is not None
    assert agent.handle_datagram(ping, src, at(1.5))
    forged = ping[:-1] + bytes([ping[-1] ^ 1])
    assert agent.handle_datagram(forged, src, at(1.5))
    stale = probe.seal_probe(
        key,
        probe.key_id(kb),
        probe.PING,
        txid=b"u" * 12,
        sent_ms=1000 * int(at(1).unix - 300),
        nonce=b"m" * 12,
    )
    assert agent.handle_datagram(stale, src, at(1.5))
    while (out := agent.poll_transmit()) is not None:
        assert probe.open_probe(key, out[0]).kind != probe.PONG, "answered an unauthenticated ping"
    counters = agent.statistics()["counters"]
    assert isinstance(counters, dict)
    assert counters["drop_unknown_peer"] == 1
    assert counters["drop_replayed_ping"] == 1
    assert counters["drop_decrypt_failed"] == 1
    assert counters["drop_stale_ping"] == 1
    assert counters["pings_answered"] == 1
    # a replayed pong proves nothing: it matches no outstanding ping
    pong = probe.seal_probe(
        key, probe.key_id(kb), probe.PONG, txid=b"t" * 12, sent_ms=0, nonce=b"p" * 12, observed=src
    )
    assert agent.handle_datagram(pong, src, at(2))
    assert agent.poll_event() is None


@given(st.binary(max_size=120))
@settings(max_examples=300)
def test_garbage_with_the_magic_is_counted_never_raises(tail: bytes) -> None:
    (pa, ka), (_, kb) = keypair(1), keypair(2)
    agent = ProbeAgent(pa, ka, random_bytes=random.Random(5).randbytes)
    agent.set_peer(kb, [], at(0))
    assert agent.handle_datagram(probe.MAGIC + tail, ("198.18.0.9", 9), at(0))
    assert agent.poll_transmit() is None and agent.poll_event() is None
    assert not agent.handle_datagram(b"\x04\x00\x00\x00" + tail, ("198.18.0.9", 9), at(0))


@given(st.floats(0.0, 0.6), st.integers(0, 1000))
@settings(max_examples=40, deadline=None)
def test_lossy_open_network_selects_only_real_addresses(drop: float, seed: int) -> None:
    a, b, ka, kb = pair(None, None, tries=10)
    events = Net([a, b], drop=drop, seed=seed).run(until=6.0)
    for side, e in events:
        if isinstance(e, PathSelected):
            assert e.address == (b.local if side == 0 else a.local)
    if drop == 0.0:
        assert a.agent.path(kb) == b.local and b.agent.path(ka) == a.local


def test_classify_mapping() -> None:
    s1, s2 = ("198.18.0.1", 3478), ("198.18.0.2", 3478)
    same = [
        BindingResult(s1, ("198.18.9.1", 4000), 0.01),
        BindingResult(s2, ("198.18.9.1", 4000), 0.01),
    ]
    diff = [
        BindingResult(s1, ("198.18.9.1", 4000), 0.01),
        BindingResult(s2, ("198.18.9.1", 4001), 0.01),
    ]
    assert classify_mapping(same) == "endpoint-independent"
    assert classify_mapping(diff) == "endpoint-dependent"
    assert classify_mapping(same[:1]) == "unknown"
    assert classify_mapping(same, local=["198.18.9.1"]) == "no-nat"
    assert classify_mapping([]) == "unknown"


def test_host_candidates_skip_loopback_and_link_local() -> None:
    got = host_candidates(["127.0.0.1", "fe80::1", "198.18.3.4", "::1", "2001:db8::5"], 51820)
    assert got == [
        Candidate("host", ("198.18.3.4", 51820)),
        Candidate("host", ("2001:db8::5", 51820)),
    ]
    assert Candidate.from_json({"kind": "srflx", "host": "198.18.1.1", "port": 5}) == Candidate(
        "srflx", ("198.18.1.1", 5)
    )
    assert Candidate.from_json({"kind": "srflx", "host": "example.com", "port": 5}) is None
    assert Candidate.from_json({"kind": "prflx", "host": "198.18.1.1", "port": 5}) is None
    relay = Candidate.from_json({"kind": "relay", "host": "198.18.1.1", "port": 5})
    assert relay == Candidate("relay", ("198.18.1.1", 5))
