"""A no-transit router is only ever a first or last hop, enforced by the router itself: a
route that asks it to pass a dial from one router on to another (stale, or forged by a
compromised controller or neighbour) gets a `transit_refused` verdict, logged and counted,
and the dial goes another way if there is one (issue 11, item 1)."""

from __future__ import annotations

import itertools

from umbranet.testing.simnet import SimNet, SimRouter, SimStream, echo


def _line(net: SimNet, n: int) -> list[SimRouter]:
    routers = [net.router(f"r{i + 1}") for i in range(n)]
    for a, b in itertools.pairwise(routers):
        net.link(a, b, latency=0.002)
    return routers


def _echo(net: SimNet, stream: SimStream, data: bytes) -> None:
    stream.write(data)
    stream.write_eof()
    net.run_until(lambda: stream.ended is not None, within=20.0)


def _dials(net: SimNet, since: int) -> list[tuple[str, str]]:
    return [
        (r.src, r.dst)
        for r in net.trace.records[since:]
        if r.frame and r.what in ("DIAL", "CONNECT")
    ]


def test_a_no_transit_router_refuses_a_route_through_it_with_a_counted_verdict() -> None:
    net = SimNet(seed=41)
    r1, r2, r3 = _line(net, 3)
    alice = net.endpoint("alice", via=[r1])
    web = net.endpoint("web", via=[r3])
    listener = web.listen("echo", echo)
    net.run_until(lambda: listener.bound, within=1.0)
    r2.switch.no_transit = True
    # Routes the controller would never compute for a no-transit r2 (stale, or forged).
    net.route(r1, "echo", via=r2)
    net.route(r2, "echo", via=r3)
    mark = len(net.trace.records)
    stream = alice.dial("echo")
    net.run_until(lambda: stream.ended is not None, within=10.0)
    assert stream.ended is not None and stream.ended.code == "transit_refused"
    assert r2.counters.get("transit_refused") == 1
    (reset,) = net.trace.find("RESET", src="r2", dst="r1")
    assert "transit" in reset.note
    # Nothing reached r3 or the host: r2 passed nothing on.
    assert _dials(net, mark) == [("alice", "r1"), ("r1", "r2")]
    assert listener.accepted == []
    assert all(r.switch.circuits == 0 for r in (r1, r2, r3))


def test_a_no_transit_router_still_starts_and_ends_dials() -> None:
    net = SimNet(seed=42)
    r1, r2, r3 = _line(net, 3)
    for router in (r1, r2, r3):
        router.switch.no_transit = True  # every router: first and last hops only
    starts_here = net.endpoint("alice", via=[r2])
    web = net.endpoint("web", via=[r3])
    listener = web.listen("echo", echo)
    net.run_until(lambda: listener.bound, within=1.0)
    net.route(r2, "echo", via=r3)
    net.route(r1, "echo", via=r2)
    stream = starts_here.dial("echo")  # r2 -> r3: starts at r2, ends at r3
    _echo(net, stream, b"first hop")
    assert stream.finished, stream.ended
    assert stream.read() == b"first hop"

    ends_here = net.endpoint("bob", via=[r2])
    local = ends_here.listen("echo2", echo)
    net.run_until(lambda: local.bound, within=1.0)
    net.route(r1, "echo2", via=r2)
    dialer = net.endpoint("carol", via=[r1])
    other = dialer.dial("echo2")  # r1 -> r2: ends at r2
    _echo(net, other, b"last hop")
    assert other.finished, other.ended
    assert other.read() == b"last hop"
    assert sum(r.counters.get("transit_refused", 0) for r in (r1, r2, r3)) == 0


def test_the_dial_goes_around_a_no_transit_router_when_another_route_exists() -> None:
    net = SimNet(seed=43)
    r1, r2, r3, r4 = (net.router(f"r{i}") for i in range(1, 5))
    net.link(r1, r2, latency=0.002)
    net.link(r2, r3, latency=0.002)
    net.link(r1, r4, latency=0.002)
    net.link(r4, r3, latency=0.002)
    alice = net.endpoint("alice", via=[r1])
    web = net.endpoint("web", via=[r3])
    listener = web.listen("echo", echo)
    net.run_until(lambda: listener.bound, within=1.0)
    r2.switch.no_transit = True
    net.route(r1, "echo", via=r2, cost=1.0)  # the cheaper one, through the no-transit r2
    net.route(r1, "echo", via=r4, cost=2.0)
    net.route(r2, "echo", via=r3)
    net.route(r4, "echo", via=r3)
    mark = len(net.trace.records)
    stream = alice.dial("echo")
    _echo(net, stream, b"around")
    assert stream.finished, stream.ended
    assert stream.read() == b"around"
    assert r2.counters.get("transit_refused") == 1
    assert _dials(net, mark) == [
        ("alice", "r1"),
        ("r1", "r2"),
        ("r1", "r4"),
        ("r4", "r3"),
        ("r3", "web"),
    ]
