"""Streams opened inside an end-to-end session (0-RTT OPENs, issue 11 item 6) on the real
machines in the simulated network: later dials skip the Noise handshake, their first bytes
ride with the OPEN, they move with the session when a router on their path dies, and a host
that no longer holds the session refuses them with a code, never silently."""

from __future__ import annotations

from tests.sim.test_sim_failover import MiB, _payload, _ready, _ring
from umbranet.proto.sessions import Sessions
from umbranet.testing.simnet import SimEndpoint, SimNet, SimRouter, SimStream


def _warm(seed: int) -> tuple[SimNet, list[SimRouter], SimEndpoint, SimEndpoint]:
    """alice at r1 and a host of echo at r3 (r1-r2-r3 fast, r1-r4-r3 spare), with one
    stream already echoed: the session later dials open in."""
    net = SimNet(seed=seed)
    routers = _ring(net)
    alice = net.endpoint("alice", via=[routers[0]])
    web = net.endpoint("web", via=[routers[2]])
    _ready(net, alice, web)
    first = _echo(net, alice, b"full handshake", in_session=True)  # no session yet
    assert first.finished and first.read() == b"full handshake"
    return net, routers, alice, web


def _echo(net: SimNet, alice: SimEndpoint, data: bytes, *, in_session: bool) -> SimStream:
    stream = alice.dial("echo", in_session=in_session)
    stream.write(data)
    stream.write_eof()
    net.run_until(lambda: stream.ended is not None, within=20.0)
    return stream


def test_later_dials_open_in_the_session_and_carry_their_first_bytes() -> None:
    net, _routers, alice, web = _warm(seed=71)
    for seed in range(3):
        data = _payload(1000 + seed, seed)
        stream = _echo(net, alice, data, in_session=True)
        assert stream.finished and stream.read() == data
    assert web.sessions.counters.get("streams_opened_in_session") == 3
    assert web.sessions.counters.get("streams_with_early_data") == 3


def test_an_in_session_stream_moves_with_its_session_when_a_router_dies() -> None:
    net, (r1, r2, _r3, r4), alice, web = _warm(seed=72)
    size = 2 * MiB + 3
    data = _payload(size, 9)
    stream = alice.dial("echo", in_session=True)
    stream.write(data)
    stream.write_eof()
    net.run_until(lambda: stream.received > size // 3, within=20.0)
    net.kill(r2)  # on the fast path r1-r2-r3: the session moves round by r4
    net.run_until(lambda: stream.ended is not None, within=60.0)
    assert stream.finished, stream.ended
    assert stream.read() == data
    assert web.sessions.counters.get("resumes_accepted") == 1
    # And the moved session still opens new streams.
    again = _echo(net, alice, b"after the move", in_session=True)
    assert again.finished and again.read() == b"after the move"
    assert r4.switch.circuits == 0 and r1.switch.circuits == 0


def test_a_host_that_lost_the_session_refuses_the_open_with_a_code() -> None:
    net, _routers, alice, web = _warm(seed=73)
    web.sessions = Sessions(deadline=30.0, entropy=net.rng.randbytes)  # a restarted host
    refused = _echo(net, alice, b"lost", in_session=True)
    assert refused.ended is not None and refused.ended.code == "resume_refused"
    assert not refused.finished
    assert web.sessions.counters.get("resume_refused") == 1
    # The SDK then forgets the session and dials with Noise: here, by hand.
    alice.sessions.forget("echo")
    fresh = _echo(net, alice, b"fresh", in_session=True)
    assert fresh.finished and fresh.read() == b"fresh"
