"""Circuits on the simulated network, in virtual time, through the real machines: the
router's switch, the endpoint's link machine, circuits with the real Noise handshake, AEAD and
flow control. Bytes cross links as real frames; only the carrier and the clock are simulated.
"""

from __future__ import annotations

import random

from umbranet.proto.flow import DEFAULT_WINDOW
from umbranet.router.quotas import SwitchLimits
from umbranet.testing.simnet import SimEndpoint, SimListener, SimNet, echo, hold, sink
from umbranet.wire import FrameType

MiB = 1024 * 1024
OPENING = ("DIAL", "CONNECT", "ACCEPT", "HANDSHAKE")


def _bound(net: SimNet, *listeners: SimListener) -> None:
    net.run_until(lambda: all(listener.bound for listener in listeners), within=1.0)


def _payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _opening(net: SimNet) -> list[tuple[str, str, str]]:
    """How the circuit opened: each handshake frame with the link it crossed."""
    return [(r.what, r.src, r.dst) for r in net.trace.records if r.frame and r.what in OPENING]


def _echo_once(net: SimNet, alice: SimEndpoint, listener: SimListener, size: int) -> bytes:
    payload = _payload(size)
    stream = alice.dial("echo")
    stream.write(payload)
    stream.write_eof()
    net.run_until(lambda: stream.ended is not None, within=10.0)
    assert stream.finished, stream.ended
    assert stream.peer is not None and stream.peer.name == "web"
    (host,) = listener.accepted
    assert host.finished and host.peer is not None and host.peer.name == "alice"
    return stream.read()


def test_dial_listen_echo_through_one_router_returns_every_byte() -> None:
    net = SimNet(seed=1)
    r1 = net.router("r1")
    web = net.endpoint("web", via=[r1])
    alice = net.endpoint("alice", via=[r1])
    listener = web.listen("echo", echo)
    _bound(net, listener)
    # Three windows' worth: the transfer only completes if credit flows back both ways.
    size = 3 * DEFAULT_WINDOW + 17
    assert _echo_once(net, alice, listener, size) == _payload(size)
    assert _opening(net) == [
        ("DIAL", "alice", "r1"),
        ("CONNECT", "r1", "web"),
        ("ACCEPT", "web", "r1"),
        ("ACCEPT", "r1", "alice"),
        ("HANDSHAKE", "alice", "r1"),
        ("HANDSHAKE", "r1", "web"),
    ]
    assert net.trace.find("RESET") == []
    assert net.trace.find("CREDIT", src="r1", dst="alice")  # the host returned credit
    assert r1.switch.circuits == 0  # both FINs passed: the router forgot the circuit


def test_dial_listen_echo_through_two_routers_on_a_static_route() -> None:
    net = SimNet(seed=2)
    r1, r2 = net.router("r1"), net.router("r2")
    net.link(r1, r2, latency=0.02)
    alice = net.endpoint("alice", via=[r1])
    web = net.endpoint("web", via=[r2])
    listener = web.listen("echo", echo)
    net.route(r1, "echo", via=r2)
    _bound(net, listener)
    size = 2 * DEFAULT_WINDOW + 5
    assert _echo_once(net, alice, listener, size) == _payload(size)
    assert _opening(net) == [
        ("DIAL", "alice", "r1"),
        ("DIAL", "r1", "r2"),  # relayed as a DIAL: r2 decides where the host is
        ("CONNECT", "r2", "web"),
        ("ACCEPT", "web", "r2"),
        ("ACCEPT", "r2", "r1"),
        ("ACCEPT", "r1", "alice"),
        ("HANDSHAKE", "alice", "r1"),
        ("HANDSHAKE", "r1", "r2"),
        ("HANDSHAKE", "r2", "web"),
    ]
    # The first router checks alice's ticket; the last one checks it again before a host
    # sees the dial (and web's bind ticket): router links relay, they do not grant.
    assert r1.counters["ticket_verifications"] == 1
    assert r2.counters["ticket_verifications"] == 2
    assert net.trace.find("RESET") == []
    assert r1.switch.circuits == r2.switch.circuits == 0


def test_a_slow_reader_stalls_only_its_own_circuit() -> None:
    net = SimNet(seed=5)
    r1 = net.router("r1")
    web = net.endpoint("web", via=[r1])
    alice = net.endpoint("alice", via=[r1])
    stalled = web.listen("slow", hold)
    flowing = web.listen("fast", sink)
    _bound(net, stalled, flowing)
    size = 4 * DEFAULT_WINDOW
    slow, fast = alice.dial("slow"), alice.dial("fast")
    for stream, seed in ((slow, 1), (fast, 2)):
        stream.write(_payload(size, seed))
        stream.write_eof()
    # Both circuits share alice's link and web's link; only one of them is read.
    net.run_until(lambda: bool(flowing.accepted) and flowing.accepted[0].eof, within=10.0)
    assert flowing.accepted[0].read() == _payload(size, 2)
    (reader,) = stalled.accepted
    assert reader.received == 0
    # What waits for the stalled reader is bounded by the window it announced, at the host
    # and at the router; the rest stays with the writer.
    assert 0 < reader.buffered <= DEFAULT_WINDOW
    route = r1.link_to(alice).routes[slow.circuit.id]
    assert route.account.in_flight <= DEFAULT_WINDOW
    assert slow.unsent >= size - DEFAULT_WINDOW
    assert not slow.ended and not reader.ended
    # A stalled circuit is only stalled: once read, it completes.
    reader.on_change = sink
    reader.resume_reading()
    net.run_until(lambda: reader.eof, within=10.0)
    assert reader.read() == _payload(size, 1)
    assert net.trace.find("RESET") == []


def test_the_router_resets_a_dial_whose_dialer_never_sends_its_handshake() -> None:
    limits = SwitchLimits(handshake_timeout=3.0)
    net = SimNet(seed=6)
    r1 = net.router("r1", limits=limits)
    web = net.endpoint("web", via=[r1])
    alice = net.endpoint("alice", via=[r1])
    listener = web.listen("echo", echo)
    _bound(net, listener)
    net.drop_frames(alice, r1, lambda frame: frame.type == FrameType.HANDSHAKE)
    dialed_at = net.now
    stream = alice.dial("echo")
    net.run_until(lambda: stream.ended is not None, within=limits.handshake_timeout + 1.0)
    assert stream.ended is not None and stream.ended.code == "handshake_timeout"
    assert stream.received == 0
    net.run_until(lambda: listener.refused, within=1.0)  # web hears of it one latency later
    # The router let go of the half-open circuit at its deadline, on both sides.
    resets = [r for r in net.trace.find("RESET", src="r1") if "handshake_timeout" in r.note]
    assert {r.dst for r in resets} == {"alice", "web"}
    for reset in resets:
        assert dialed_at + limits.handshake_timeout <= reset.time
        assert reset.time <= dialed_at + limits.handshake_timeout + 0.1  # one latency late
    assert r1.counters["handshake_timeout"] == 1
    assert r1.switch.pending_handshakes == 0 and r1.switch.circuits == 0
    assert listener.accepted == []
    assert [code for code, _ in listener.refused] == ["handshake_timeout"]
    assert net.trace.find("HANDSHAKE", src="alice", note="dropped")
