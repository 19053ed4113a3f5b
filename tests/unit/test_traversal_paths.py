"""NAT traversal plugged into the path abstraction (proto/paths.py, relay branch): a peer
starts on the router relay, moves to the probe-found pair when it is proven, and falls back
to the relay when the pair goes silent."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.unit.test_traversal import run
from tests.wireguard_harness import A_IP, B_IP, key, seeded
from umbranet.proto.ice import Candidate, PathLost, PathSelected
from umbranet.proto.paths import Path, PathChanged, PathKind, PathSet, relay_address
from umbranet.proto.traversal import Traversal
from umbranet.proto.wireguard import Device
from umbranet.proto.wireguard.crypto import public_key
from umbranet.testing.clock import FakeClock

A = ("198.18.1.2", 51820)
B = ("198.18.2.2", 51820)


def test_relay_first_then_punched_then_back_to_relay() -> None:
    clock = FakeClock(start=datetime(2026, 12, 4, 12, 0, tzinfo=UTC))
    ka, kb = public_key(key("a")), public_key(key("b"))
    da, db = Device(key("a"), random_bytes=seeded(1)), Device(key("b"), random_bytes=seeded(2))
    da.add_peer(kb, allowed_ips=[f"{B_IP}/32"])
    db.add_peer(ka, allowed_ips=[f"{A_IP}/32"])
    sets = {ka: PathSet(kb), kb: PathSet(ka)}  # A's set for B, B's set for A
    sets[ka].add(Path(PathKind.RELAY, relay_address(kb)), clock.mono)
    sets[kb].add(Path(PathKind.RELAY, relay_address(ka)), clock.mono)
    ta = Traversal(da, key("a"), ka, random_bytes=seeded(3), paths=lambda peer: sets[ka])
    tb = Traversal(db, key("b"), kb, random_bytes=seeded(4), paths=lambda peer: sets[kb])
    assert sets[ka].current == Path(PathKind.RELAY, relay_address(kb))  # relayed at once
    changes: list[PathChanged] = []

    def take() -> None:
        while (event := sets[ka].poll_event()) is not None:
            changes.append(event)

    take()
    ta.set_peer(kb, [Candidate("host", B)], clock.now())
    tb.set_peer(ka, [Candidate("host", A)], clock.now())
    sides = {A: ta, B: tb}
    run(clock, sides, 2.0)
    take()
    assert isinstance(ta.poll_path_event(), PathSelected)
    assert sets[ka].current == Path(PathKind.PUNCHED, B)
    assert sets[kb].current == Path(PathKind.PUNCHED, A)
    assert changes[-1].new == Path(PathKind.PUNCHED, B)
    # the device is left to the shell: traversal did not set an endpoint itself
    assert da.endpoint_of(kb) is None
    # the pair goes silent (both NATs forget it): keepalives go unanswered, back to relay
    for _ in range(1000):
        deadline = ta.poll_timeout()
        if deadline is None or deadline.at > clock.mono + 40.0:
            break
        clock.advance(max(0.0, deadline.at - clock.mono))
        ta.handle_timeout(clock.now())
        while ta.poll_all_transmit() is not None:
            pass  # lost on the way
        if sets[ka].current is not None and sets[ka].current.kind is PathKind.RELAY:
            break
    take()
    assert any(isinstance(e, PathLost) for e in iter(ta.poll_path_event, None))
    assert sets[ka].current == Path(PathKind.RELAY, relay_address(kb))
    assert changes[-1].old == Path(PathKind.PUNCHED, B)
    assert changes[-1].new == Path(PathKind.RELAY, relay_address(kb))


def test_a_refresh_does_not_re_prove_a_pair_the_path_set_saw_go_silent() -> None:
    """During an outage the probes' selected pair outlives the path set's proof (the probe
    agent declares a pair lost only after 3 keepalives of 10 s); re-offering it on every
    refresh must not put traffic back on the dead pair, or the peer flaps between the relay
    and a black hole until the probes give up."""
    clock = FakeClock(start=datetime(2026, 12, 4, 12, 0, tzinfo=UTC))
    ka, kb = public_key(key("a")), public_key(key("b"))
    da, db = Device(key("a"), random_bytes=seeded(1)), Device(key("b"), random_bytes=seeded(2))
    da.add_peer(kb, allowed_ips=[f"{B_IP}/32"])
    db.add_peer(ka, allowed_ips=[f"{A_IP}/32"])
    sets = {ka: PathSet(kb, deadline=3.0), kb: PathSet(ka, deadline=3.0)}
    relay = Path(PathKind.RELAY, relay_address(kb))
    sets[ka].add(relay, clock.mono)
    sets[kb].add(Path(PathKind.RELAY, relay_address(ka)), clock.mono)
    ta = Traversal(da, key("a"), ka, random_bytes=seeded(3), paths=lambda peer: sets[ka])
    tb = Traversal(db, key("b"), kb, random_bytes=seeded(4), paths=lambda peer: sets[kb])
    ta.set_peer(kb, [Candidate("host", B)], clock.now())
    tb.set_peer(ka, [Candidate("host", A)], clock.now())
    run(clock, {A: ta, B: tb}, 2.0)
    assert sets[ka].current == Path(PathKind.PUNCHED, B)
    # the pair dies: A sends on it and hears nothing for the deadline
    sets[ka].handle_sent(B, clock.mono)
    clock.advance(3.5)
    sets[ka].handle_timeout(clock.mono)
    assert sets[ka].current == relay and ta.direct.get(kb) == B  # probes not yet told
    ta.reoffer(clock.now())  # the agent's next refresh
    assert sets[ka].current == relay
    assert not sets[ka].proven(B)
