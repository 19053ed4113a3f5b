"""Circuits across a mesh of routers on the simulated network, on routes computed by the
controller's path function (`controller/service/links.py`) from the routers' own state."""

from __future__ import annotations

import itertools
import random

import pytest

from umbranet.proto.flow import DEFAULT_WINDOW
from umbranet.testing.simnet import (
    Port,
    SimEndpoint,
    SimListener,
    SimNet,
    SimRouter,
    SimStream,
    echo,
)
from umbranet.wire import FrameType, encode_control
from umbranet.wire.frames import encode_frame

KEEPALIVE_MEASURED = 6.0  # one keepalive interval (5 s) and change: every link has an RTT


def _payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _dials(net: SimNet, since: int = 0) -> list[tuple[str, str]]:
    """Which links each DIAL (and the final CONNECT) crossed, in order."""
    return [
        (r.src, r.dst)
        for r in net.trace.records[since:]
        if r.frame and r.what in ("DIAL", "CONNECT")
    ]


def _ring(net: SimNet, r1: SimRouter, r2: SimRouter, r3: SimRouter, r4: SimRouter) -> None:
    """A ring where r1-r2-r3 is a little faster than r1-r4-r3 (one-way latencies)."""
    net.link(r1, r2, latency=0.002)
    net.link(r2, r3, latency=0.002)
    net.link(r1, r4, latency=0.002)
    net.link(r4, r3, latency=0.003)


def _line(net: SimNet, n: int, latency: float = 0.01) -> list[SimRouter]:
    routers = [net.router(f"r{i + 1}") for i in range(n)]
    for a, b in itertools.pairwise(routers):
        net.link(a, b, latency=latency)
    return routers


def _echo(net: SimNet, alice: SimEndpoint, size: int, seed: int) -> SimStream:
    stream = alice.dial("echo")
    stream.write(_payload(size, seed))
    stream.write_eof()
    net.run_until(lambda: stream.ended is not None, within=20.0)
    return stream


def _bound_and_routed(net: SimNet, listener: SimListener) -> None:
    net.run_until(lambda: listener.bound, within=1.0)
    net.run_for(KEEPALIVE_MEASURED)
    net.mesh_routes()


@pytest.mark.parametrize(("host_at", "hops"), [(2, 2), (3, 3)])
def test_a_dial_crosses_two_and_three_router_links_with_every_byte_intact(
    host_at: int, hops: int
) -> None:
    net = SimNet(seed=10 + hops)
    routers = _line(net, 4)
    alice = net.endpoint("alice", via=[routers[0]])
    web = net.endpoint("web", via=[routers[host_at]])
    listener = web.listen("echo", echo)
    _bound_and_routed(net, listener)
    size = 2 * DEFAULT_WINDOW + 11
    stream = _echo(net, alice, size, hops)
    assert stream.finished, stream.ended
    assert stream.read() == _payload(size, hops)
    path = [f"r{i + 1}" for i in range(host_at + 1)]
    # DIAL from alice, one DIAL per router link, CONNECT from the host's router.
    assert _dials(net) == [
        ("alice", "r1"),
        *itertools.pairwise(path),
        (path[-1], "web"),
    ]
    assert len(path) - 1 == hops
    # Ticket checked at the first router, re-checked at the last one; the middle relays.
    assert routers[0].counters["ticket_verifications"] == 1
    for middle in routers[1:host_at]:
        assert middle.counters.get("ticket_verifications", 0) == 0
    assert net.trace.find("RESET") == []
    assert all(r.switch.circuits == 0 for r in routers)


def test_routes_follow_measured_latency_and_offer_only_loop_free_fallbacks() -> None:
    net = SimNet(seed=21)
    r1, r2, r3, r4 = (net.router(f"r{i}") for i in range(1, 5))
    _ring(net, r1, r2, r3, r4)
    web = net.endpoint("web", via=[r3])
    listener = web.listen("echo", echo)
    _bound_and_routed(net, listener)
    at_r1 = r1.switch.routes.remote()["echo"]
    by_link = {link: cost for link, cost in at_r1.items()}
    fast, slow = by_link[r1.link_to(r2)], by_link[r1.link_to(r4)]
    # Both feasible: r2 and r4 are each closer to r3 than r1 is, so neither sends back.
    assert fast < slow
    # r2 is one hop from the host: going back through r1 would not bring it closer.
    assert set(r2.switch.routes.remote()["echo"]) == {r2.link_to(r3)}
    assert "echo" not in r3.switch.routes.remote()  # bound there: the local host wins


def test_a_partitioned_hop_ends_its_circuit_with_peer_gone_and_the_next_dial_goes_around() -> None:
    net = SimNet(seed=22)
    r1, r2, r3, r4 = (net.router(f"r{i}") for i in range(1, 5))
    _ring(net, r1, r2, r3, r4)
    alice = net.endpoint("alice", via=[r1])
    web = net.endpoint("web", via=[r3])
    listener = web.listen("echo", echo)
    _bound_and_routed(net, listener)

    mark = len(net.trace.records)
    held = alice.dial("echo")
    held.write(b"before the partition")
    net.run_until(lambda: held.received >= len(b"before the partition"), within=5.0)
    assert _dials(net, mark) == [("alice", "r1"), ("r1", "r2"), ("r2", "r3"), ("r3", "web")]

    net.partition(r1, r2)
    net.run_until(lambda: held.ended is not None, within=30.0)
    assert held.ended is not None and held.ended.code == "peer_gone"
    (host_end,) = listener.accepted
    net.run_until(lambda: host_end.ended is not None, within=5.0)
    assert host_end.ended is not None and host_end.ended.code == "peer_gone"
    # The lost link took its routes with it; the fallback was already installed.
    assert set(r1.switch.routes.remote()["echo"]) == {r1.link_to(r4)}

    mark = len(net.trace.records)
    size = DEFAULT_WINDOW + 3
    again = _echo(net, alice, size, 5)
    assert again.finished, again.ended
    assert again.read() == _payload(size, 5)
    assert _dials(net, mark) == [("alice", "r1"), ("r1", "r4"), ("r4", "r3"), ("r3", "web")]


@pytest.mark.parametrize(
    ("revoking", "holder", "action"), [(0, "alice", "dial"), (2, "web", "bind")]
)
def test_revocation_at_either_end_of_a_two_hop_path_closes_both_ends(
    revoking: int, holder: str, action: str
) -> None:
    net = SimNet(seed=23)
    routers = _line(net, 3)
    alice = net.endpoint("alice", via=[routers[0]])
    web = net.endpoint("web", via=[routers[2]])
    listener = web.listen("echo", echo)
    _bound_and_routed(net, listener)
    stream = alice.dial("echo")
    stream.write(b"x")
    net.run_until(lambda: stream.received == 1, within=5.0)
    (host_end,) = listener.accepted
    # Grants live only on endpoint links: the dialer's at r1, the host's at r3.
    assert net.revoke(routers[revoking], holder, action, "echo") == 1
    net.run_until(lambda: stream.ended is not None and host_end.ended is not None, within=5.0)
    assert stream.ended is not None and stream.ended.code == "revoked"
    assert host_end.ended is not None and host_end.ended.code == "revoked"
    assert all(r.switch.circuits == 0 for r in routers)


def test_without_a_loop_free_fallback_the_router_asks_again_and_the_next_dial_goes_around() -> None:
    net = SimNet(seed=24)
    r1, r2, r3, r4 = (net.router(f"r{i}") for i in range(1, 5))
    net.link(r1, r2, latency=0.002)
    net.link(r2, r3, latency=0.002)
    net.link(r1, r4, latency=0.02)  # r4 is further from r3 than r1 is: not a safe next hop
    net.link(r4, r3, latency=0.02)
    alice = net.endpoint("alice", via=[r1])
    web = net.endpoint("web", via=[r3])
    listener = web.listen("echo", echo)
    _bound_and_routed(net, listener)
    assert set(r1.switch.routes.remote()["echo"]) == {r1.link_to(r2)}

    net.link_down(r1, r2)
    assert "echo" not in r1.switch.routes.remote()  # dropped with the link, at once
    refused = alice.dial("echo")
    net.run_until(lambda: refused.ended is not None, within=5.0)
    assert refused.ended is not None and refused.ended.code == "no_terminator"

    net.mesh_routes()  # what the router's report brings back once the link is gone
    mark = len(net.trace.records)
    size = DEFAULT_WINDOW + 9
    again = _echo(net, alice, size, 6)
    assert again.finished, again.ended
    assert again.read() == _payload(size, 6)
    assert _dials(net, mark) == [("alice", "r1"), ("r1", "r4"), ("r4", "r3"), ("r3", "web")]


def _forge(
    net: SimNet, src: SimRouter, dst: SimRouter, ftype: FrameType, fields: dict[str, object]
) -> int:
    """`src` misbehaves: one frame written straight onto its link to `dst`."""
    circuit = 1001  # in the opener's (odd) half of the link's id space
    port = src.link_to(dst).handle
    assert isinstance(port, Port)
    net.send(port, encode_frame(ftype, circuit, encode_control(fields)))
    return circuit


@pytest.mark.parametrize(
    ("subject", "service", "code"),
    [
        ("mallory", "echo", "ticket_wrong_identity"),  # someone else's ticket, alice's name
        ("alice", "other", "ticket_wrong_service"),  # alice's ticket for another service
    ],
)
def test_a_router_forging_a_dial_is_refused_at_the_last_router(
    subject: str, service: str, code: str
) -> None:
    net = SimNet(seed=25)
    r1, r2 = _line(net, 2)
    web = net.endpoint("web", via=[r2])
    listener = web.listen("echo", echo)
    net.run_until(lambda: listener.bound, within=1.0)
    mark = len(net.trace.records)
    ticket = net.ticket(f"spiffe://test.umbra/workload/{subject}", service, "dial")
    alice = "spiffe://test.umbra/workload/alice"
    fields = {"service": "echo", "ticket": ticket, "dialer": alice, "window": DEFAULT_WINDOW}
    circuit = _forge(net, r1, r2, FrameType.DIAL, fields)
    net.run_for(1.0)
    (reset,) = net.trace.find("RESET", src="r2", dst="r1")
    assert reset.circuit == circuit and code in reset.note
    assert r2.counters[code] == 1
    # The host never heard of it; the link between the routers lives on.
    assert not [r for r in net.trace.records[mark:] if r.dst == "web" and r.what == "CONNECT"]
    assert listener.accepted == [] and r2.switch.circuits == 0
    assert r1.link_to(r2).session.ready


def test_a_router_link_may_not_bind_and_is_closed_for_trying() -> None:
    net = SimNet(seed=26)
    r1, r2 = _line(net, 2)
    net.run_for(0.1)
    ticket = net.ticket("spiffe://test.umbra/router/r1", "echo", "bind")
    _forge(net, r1, r2, FrameType.BIND, {"service": "echo", "ticket": ticket})
    net.run_for(1.0)
    assert r2.counters["protocol_error"] == 1
    assert "echo" not in {b.service for b in r2.switch.terminators.all()}
    with pytest.raises(LookupError):
        r2.link_to(r1)
