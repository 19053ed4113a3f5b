"""A seven-router mesh on the simulated network under link failures, flapping links,
partitions and a router that dies mid-transfer; no-transit routers; a host that refuses a
dial before accepting. Routes are what the controller's path function computes from the
routers' state (`SimNet.mesh_routes`, as each router's report would bring back); every
path is read from the trace (which links each DIAL and CONNECT crossed)."""

from __future__ import annotations

import random

from umbranet.controller.service.links import MeshPolicy
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
SILENCE = 20.0  # past the 15 s keepalive deadline: a partitioned link is declared dead

# One-way latencies: r1-r2-r3-r4 is the fast line, r1-r5-r6-r4 the detour, r7 a chord.
MESH = {
    ("r1", "r2"): 0.002,
    ("r2", "r3"): 0.002,
    ("r3", "r4"): 0.002,
    ("r1", "r5"): 0.003,
    ("r5", "r6"): 0.003,
    ("r6", "r4"): 0.003,
    ("r2", "r7"): 0.002,
    ("r7", "r4"): 0.006,
}
FAST = ["r1", "r2", "r3", "r4"]
DETOUR = ["r1", "r5", "r6", "r4"]


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _mesh(seed: int) -> tuple[SimNet, dict[str, SimRouter], SimEndpoint, SimListener]:
    net = SimNet(seed=seed)
    routers = {f"r{i}": net.router(f"r{i}") for i in range(1, 8)}
    for (a, b), latency in MESH.items():
        net.link(routers[a], routers[b], latency=latency)
    alice = net.endpoint("alice", via=[routers["r1"]])
    web = net.endpoint("web", via=[routers["r4"]])
    listener = web.listen("echo", echo)
    net.run_until(lambda: listener.bound, within=1.0)
    net.run_for(KEEPALIVE_MEASURED)
    net.mesh_routes()
    return net, routers, alice, listener


def _path(net: SimNet, since: int) -> list[str]:
    """The routers the dial crossed, from the dialer's router to the host's. A router that
    refused the dial back to its neighbour (which then tried another route) is left out."""
    hops = [(r.src, r.dst) for r in net.trace.records[since:] if r.frame and r.what == "DIAL"]
    assert hops, "no DIAL in the trace"
    path = [hops[0][1]]
    for src, dst in hops[1:]:
        assert src in path, f"the dial jumped: {hops}"
        del path[path.index(src) + 1 :]  # back to where it was tried again
        path.append(dst)
    return path


def _echo(net: SimNet, alice: SimEndpoint, seed: int, size: int = DEFAULT_WINDOW + 7) -> list[str]:
    """One echo round; returns the path it took (every byte checked)."""
    mark = len(net.trace.records)
    stream = alice.dial("echo")
    stream.write(_payload(size, seed))
    stream.write_eof()
    net.run_until(lambda: stream.ended is not None, within=20.0)
    assert stream.finished, stream.ended
    assert stream.read() == _payload(size, seed)
    path = _path(net, mark)
    assert len(path) == len(set(path)), f"a loop: {path}"
    return path


def _held(net: SimNet, alice: SimEndpoint) -> SimStream:
    stream = alice.dial("echo")
    stream.write(b"hello")
    net.run_until(lambda: stream.received >= 5, within=5.0)
    return stream


def test_a_failed_link_reroutes_and_a_flapping_link_never_loops_or_loses_a_dial() -> None:
    net, r, alice, _listener = _mesh(seed=41)
    assert _echo(net, alice, 1) == FAST

    held = _held(net, alice)
    net.link_down(r["r2"], r["r3"])
    net.run_until(lambda: held.ended is not None, within=5.0)
    assert held.ended is not None and held.ended.code == "peer_gone"  # told, never silent
    net.mesh_routes()
    assert _echo(net, alice, 2) == DETOUR

    paths = []
    for flap in range(3):  # the link comes back and goes again, three times
        net.link(r["r2"], r["r3"], latency=MESH[("r2", "r3")])
        net.run_for(KEEPALIVE_MEASURED)
        net.mesh_routes()
        paths.append(_echo(net, alice, 10 + flap))
        net.link_down(r["r2"], r["r3"])
        # Before any new report, r1's fallbacks were installed already: no dial refused.
        paths.append(_echo(net, alice, 20 + flap))
        net.mesh_routes()
    assert paths in ([FAST, ["r1", "r2", "r7", "r4"]] * 3, [FAST, DETOUR] * 3)
    assert all(router.switch.circuits == 0 for router in r.values())


def test_a_partition_refuses_dials_with_a_reason_and_healing_restores_the_fast_path() -> None:
    net, r, alice, _listener = _mesh(seed=42)
    held = _held(net, alice)
    cut = [("r2", "r3"), ("r5", "r6"), ("r7", "r4")]  # {r1,r2,r5,r7} | {r3,r4,r6}
    for a, b in cut:
        net.partition(r[a], r[b])
    net.run_until(lambda: held.ended is not None, within=SILENCE + 5)
    assert held.ended is not None and held.ended.code == "peer_gone"
    net.mesh_routes()
    refused = alice.dial("echo")
    net.run_until(lambda: refused.ended is not None, within=5.0)
    assert refused.ended is not None and refused.ended.code == "no_terminator"
    assert [x.note for x in net.trace.find("LINK_DOWN")][: len(cut)]  # each cut link seen dead

    for a, b in cut:
        net.heal(r[a], r[b])
        net.link(r[a], r[b], latency=MESH[(a, b)])  # the routers' mesh shells dial again
    net.run_for(KEEPALIVE_MEASURED)
    net.mesh_routes()
    assert _echo(net, alice, 3) == FAST


def test_a_router_that_dies_mid_transfer_ends_the_stream_with_a_code_and_dials_go_around() -> None:
    net, r, alice, listener = _mesh(seed=43)
    stream = alice.dial("echo")
    stream.write(_payload(3 * DEFAULT_WINDOW, 4))
    net.run_until(lambda: stream.received > 0, within=5.0)
    net.kill(r["r3"])  # no GOAWAY, no FIN: only the keepalive notices
    net.run_until(lambda: stream.ended is not None, within=SILENCE + 5)
    assert stream.ended is not None and stream.ended.code == "peer_gone"
    assert stream.received < 3 * DEFAULT_WINDOW  # cut short, and said so
    (host_end,) = listener.accepted
    net.run_until(lambda: host_end.ended is not None, within=5.0)
    assert host_end.ended is not None and host_end.ended.code == "peer_gone"
    del net.routers["r3"]  # a dead router stops reporting: the controller forgets it
    net.mesh_routes()
    assert _echo(net, alice, 5) in (DETOUR, ["r1", "r2", "r7", "r4"])


def test_a_no_transit_router_is_only_ever_a_first_or_last_hop() -> None:
    net, r, alice, _listener = _mesh(seed=44)
    net.mesh_routes(policy=MeshPolicy(no_transit=frozenset({r["r3"].spiffe_id})))
    path = _echo(net, alice, 6)
    assert "r3" not in path and path in (DETOUR, ["r1", "r2", "r7", "r4"])
    # Its own endpoints still dial out through it, and it still reaches hosts.
    carol = net.endpoint("carol", via=[r["r3"]])
    assert _echo(net, carol, 7) == ["r3", "r4"]
    # A link cost moves paths off one link only.
    policy = MeshPolicy(link_costs={frozenset((r["r1"].spiffe_id, r["r2"].spiffe_id)): 100.0})
    net.mesh_routes(policy=policy)
    assert _echo(net, alice, 8) == DETOUR


def test_a_host_refusing_a_dial_before_accepting_is_skipped_and_the_dialer_sees_nothing() -> None:
    net = SimNet(seed=45)
    r1 = net.router("r1")
    alice = net.endpoint("alice", via=[r1])
    first = net.endpoint("web1", via=[r1])
    second = net.endpoint("web2", via=[r1])
    stale = first.listen("echo", echo)
    good = second.listen("echo", echo)
    net.run_until(lambda: stale.bound and good.bound, within=1.0)
    r1.switch.terminators.set_strategies({"echo": "precedence"})
    for binding in r1.switch.terminators.all():
        binding.precedence = 0 if binding.identity.endswith("web1") else 1
    # web1 forgets its binding without telling the router (its UNBIND is lost): it
    # answers the router's CONNECT with a refusal.
    first.unbind(stale, silently=True)
    net.run_for(0.1)

    mark = len(net.trace.records)
    stream = alice.dial("echo")
    stream.write(b"ping")
    stream.write_eof()
    net.run_until(lambda: stream.ended is not None, within=5.0)
    assert stream.finished and stream.read() == b"ping"
    connects = [x.dst for x in net.trace.records[mark:] if x.frame and x.what == "CONNECT"]
    assert connects == ["web1", "web2"]  # the primary first, then the standby
    assert r1.counters["dial_retried"] == 1
    assert [x for x in net.trace.records[mark:] if x.what == "RESET" and x.dst == "alice"] == []
    # The refusing host is passed over from now on: the next dial goes straight to web2.
    mark = len(net.trace.records)
    again = alice.dial("echo")
    again.write_eof()
    net.run_until(lambda: again.ended is not None, within=5.0)
    assert [x.dst for x in net.trace.records[mark:] if x.frame and x.what == "CONNECT"] == ["web2"]


def _stale_hosts(net: SimNet, r1: SimRouter, count: int) -> list[SimEndpoint]:
    """`count` hosts of echo at `r1` that lost their bindings without the router knowing."""
    hosts = [net.endpoint(f"web{i}", via=[r1]) for i in range(count)]
    listeners = [host.listen("echo", echo) for host in hosts]
    net.run_until(lambda: all(x.bound for x in listeners), within=1.0)
    for host, listener in zip(hosts, listeners, strict=True):
        host.unbind(listener, silently=True)
    net.run_for(0.1)
    return hosts


def test_a_dial_is_offered_to_at_most_three_hosts_then_the_dialer_hears_the_refusal() -> None:
    net = SimNet(seed=46)
    r1 = net.router("r1")
    alice = net.endpoint("alice", via=[r1])
    _stale_hosts(net, r1, 5)
    mark = len(net.trace.records)
    stream = alice.dial("echo")
    net.run_until(lambda: stream.ended is not None, within=5.0)
    assert stream.ended is not None and stream.ended.code == "refused"
    connects = [x.dst for x in net.trace.records[mark:] if x.frame and x.what == "CONNECT"]
    assert len(connects) == 3 and len(set(connects)) == 3  # three different hosts, no more
    assert r1.counters["dial_retried"] == 2 and r1.switch.circuits == 0


def test_a_bind_with_an_out_of_range_weight_or_precedence_is_refused_with_a_code() -> None:
    net = SimNet(seed=47)
    r1 = net.router("r1")
    web = net.endpoint("web", via=[r1])
    net.run_for(0.1)
    router_port = r1.link_to(web).handle
    assert isinstance(router_port, Port)
    ticket = net.ticket(web.identity.spiffe_id, "echo", "bind")
    bad = ({"weight": 5000}, {"precedence": -1}, {"weight": "heavy"}, {"precedence": True})
    mark = len(net.trace.records)
    for binding, extra in enumerate(bad, 7):
        fields = {"service": "echo", "ticket": ticket, **extra}
        net.send(router_port.peer, encode_frame(FrameType.BIND, binding, encode_control(fields)))
    net.run_for(0.5)
    refusals = [x for x in net.trace.records[mark:] if x.what == "BIND_ERR" and x.src == "r1"]
    assert [x.circuit for x in refusals] == [7, 8, 9, 10]
    assert all("bad_control_payload" in x.note for x in refusals)
    assert r1.switch.terminators.all() == [] and r1.link_to(web).session.ready


def test_a_host_whose_link_drops_before_accepting_hands_the_dial_to_another_host() -> None:
    net = SimNet(seed=48)
    r1 = net.router("r1")
    alice = net.endpoint("alice", via=[r1])
    dying, alive = net.endpoint("web1", via=[r1]), net.endpoint("web2", via=[r1])
    first, second = dying.listen("echo", echo), alive.listen("echo", echo)
    net.run_until(lambda: first.bound and second.bound, within=1.0)
    r1.switch.terminators.set_strategies({"echo": "precedence"})  # web1 bound first: primary
    net.drop_frames(dying, r1, lambda _frame: True)  # web1 hangs: it never answers
    mark = len(net.trace.records)
    stream = alice.dial("echo")
    stream.write(b"ping")
    stream.write_eof()
    net.run_until(lambda: any(x.what == "CONNECT" for x in net.trace.records[mark:]), within=1)
    net.link_down(dying, r1)  # ... and then its link breaks, the CONNECT unanswered
    net.run_until(lambda: stream.ended is not None, within=5.0)
    assert stream.finished and stream.read() == b"ping"
    connects = [x.dst for x in net.trace.records[mark:] if x.frame and x.what == "CONNECT"]
    assert connects == ["web1", "web2"]
    assert r1.counters["dial_retried"] == 1
