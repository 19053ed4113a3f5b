"""Several host processes of one service told apart (issue 11, items 4 and 6): a stream
opened inside an end-to-end session goes to the process holding that session, under every
terminator strategy and across routers, because each process binds with its own host
instance id and the dialer learns it from the host's ACCEPT. Before instance ids, a router
spreading dials sent about half of such opens to the other process, which refused them."""

from __future__ import annotations

import pytest

from tests.sim.test_sim_failover import MiB, _payload, _ring
from umbranet.testing.simnet import SimEndpoint, SimNet, SimRouter, SimStream, echo

KEEPALIVE_MEASURED = 6.0  # every router link has a measured RTT
STREAMS = 24


def _echo(net: SimNet, dialer: SimEndpoint, data: bytes) -> SimStream:
    stream = dialer.dial("echo", in_session=True)
    stream.write(data)
    stream.write_eof()
    net.run_until(lambda: stream.ended is not None, within=20.0)
    return stream


def _hosts(
    net: SimNet, at: tuple[SimRouter, SimRouter], *, one_identity: bool = True
) -> tuple[SimEndpoint, SimEndpoint]:
    """Two host processes of `echo` (one workload identity, unless not `one_identity`),
    the first bound at at[0], the second at at[1]."""
    web_a = net.endpoint("web-a", via=[at[0]])
    same = web_a.identity if one_identity else None
    web_b = net.endpoint("web-b", via=[at[1]], identity=same)
    first, second = web_a.listen("echo", echo), web_b.listen("echo", echo)
    net.run_until(lambda: bool(first.bound and second.bound), within=1.0)
    return web_a, web_b


def _open_many(net: SimNet, dialers: list[SimEndpoint], hosts: list[SimEndpoint]) -> None:
    """Each dialer's first stream makes its session; every later one opens in it and must
    reach the process holding it, never another (no refusal, each byte echoed)."""
    for dialer in dialers:
        first = _echo(net, dialer, b"handshake")
        assert first.finished and first.read() == b"handshake"
    for i in range(STREAMS):
        dialer = dialers[i % len(dialers)]
        data = f"stream {i}".encode()
        stream = _echo(net, dialer, data)
        assert stream.finished, stream.ended
        assert stream.read() == data
    by_name = {host.name: host for host in hosts}
    for host in hosts:
        assert host.sessions.counters.get("resume_refused", 0) == 0
    opened = dict.fromkeys(by_name, 0)
    for dialer in dialers:
        key = dialer.sessions.key_for("echo")
        assert key is not None and key.instance in by_name  # learned from the ACCEPT
        opened[key.instance] += STREAMS // len(dialers)
    for name, host in by_name.items():
        assert host.sessions.counters.get("streams_opened_in_session", 0) == opened[name]


@pytest.mark.parametrize("strategy", ["random", "weighted", "smart", "sticky"])
def test_two_processes_of_one_identity_at_one_router_each_get_their_own_sessions(
    strategy: str,
) -> None:
    net = SimNet(seed=81)
    r1 = net.router("r1")
    r1.switch.terminators.set_strategies({"echo": strategy})
    web_a, web_b = _hosts(net, (r1, r1))
    dialers = [net.endpoint(name, via=[r1]) for name in ("alice", "bob", "carol")]
    _open_many(net, dialers, [web_a, web_b])
    assert r1.switch.terminators.counters["picked_session_host"] == STREAMS


@pytest.mark.parametrize("strategy", ["random", "weighted"])
def test_in_session_opens_are_never_refused_with_two_host_identities(strategy: str) -> None:
    net = SimNet(seed=82)
    r1 = net.router("r1")
    r1.switch.terminators.set_strategies({"echo": strategy})
    web_a, web_b = _hosts(net, (r1, r1), one_identity=False)
    dialers = [net.endpoint(name, via=[r1]) for name in ("alice", "bob")]
    _open_many(net, dialers, [web_a, web_b])


def test_across_two_routers_the_open_reaches_the_process_holding_its_session() -> None:
    """alice at r1; both processes at r2, which picks at random: the instance crosses r1."""
    net = SimNet(seed=83)
    r1, r2 = net.router("r1"), net.router("r2")
    net.link(r1, r2, latency=0.002)
    r2.switch.terminators.set_strategies({"echo": "random"})
    web_a, web_b = _hosts(net, (r2, r2))
    dialers = [net.endpoint(name, via=[r1]) for name in ("alice", "bob")]
    net.run_for(KEEPALIVE_MEASURED)
    net.mesh_routes()
    _open_many(net, dialers, [web_a, web_b])
    assert r1.counters.get("instance_gone", 0) == 0


def test_an_open_tries_the_next_route_when_the_nearest_host_router_has_another_process() -> None:
    """r3 routes echo through r1 (cheaper) and r2, each with one process of the host. A
    session made with the process at r2 keeps opening there: r1 refuses the open for the
    process it does not have (`instance_gone`) and r3 goes round by r2 (crank-back)."""
    net = SimNet(seed=84)
    r1, r2, r3 = (net.router(f"r{i}") for i in range(1, 4))
    net.link(r3, r1, latency=0.001)
    net.link(r3, r2, latency=0.004)
    alice = net.endpoint("alice", via=[r3])
    web_b = net.endpoint("web-b", via=[r2])
    second = web_b.listen("echo", echo)
    net.run_until(lambda: bool(second.bound), within=1.0)
    net.run_for(KEEPALIVE_MEASURED)
    net.mesh_routes()
    first = _echo(net, alice, b"handshake")  # the only host yet: the session is with web-b
    assert first.finished
    web_a = net.endpoint("web-a", via=[r1], identity=web_b.identity)
    other = web_a.listen("echo", echo)
    net.run_until(lambda: bool(other.bound), within=1.0)
    net.mesh_routes()
    assert len(r3.switch.routes.remote()["echo"]) == 2
    for i in range(4):
        stream = _echo(net, alice, f"again {i}".encode())
        assert stream.finished, stream.ended
        assert stream.read() == f"again {i}".encode()
    assert web_b.sessions.counters.get("streams_opened_in_session") == 4
    assert web_a.sessions.counters.get("resume_refused", 0) == 0
    assert r1.counters["instance_gone"] == 4
    assert r3.counters["dial_retried"] == 4
    # A new dialer's first dial still follows the routes: the nearer process.
    bob = net.endpoint("bob", via=[r3])
    fresh = _echo(net, bob, b"new")
    assert fresh.finished
    key = bob.sessions.key_for("echo")
    assert key is not None and key.instance == "web-a"


def test_an_open_for_a_process_that_left_is_refused_with_instance_gone() -> None:
    """The session's process unbinds while another of its identity still hosts: the open is
    refused at the router with a code (the SDK then dials afresh), not handed to the other
    process to refuse."""
    net = SimNet(seed=85)
    r1 = net.router("r1")
    web_a, web_b = _hosts(net, (r1, r1))
    alice = net.endpoint("alice", via=[r1])
    first = _echo(net, alice, b"handshake")
    assert first.finished
    key = alice.sessions.key_for("echo")
    assert key is not None
    holder = web_a if key.instance == "web-a" else web_b
    other = web_b if holder is web_a else web_a
    for listener in list(holder.listeners.values()):
        holder.unbind(listener)
    net.run_for(0.1)
    refused = _echo(net, alice, b"gone")
    assert refused.ended is not None and refused.ended.code == "instance_gone"
    assert r1.counters["instance_gone"] == 1
    assert other.sessions.counters.get("resume_refused", 0) == 0
    alice.sessions.forget("echo")  # as the SDK does on this code
    fresh = _echo(net, alice, b"fresh")
    assert fresh.finished and fresh.read() == b"fresh"
    key = alice.sessions.key_for("echo")
    assert key is not None and key.instance == other.name


def test_streams_resume_at_their_own_process_when_a_router_on_the_path_dies() -> None:
    """Two processes of one identity at r3 (random strategy); six streams from alice at r1,
    each with its own session; r2, on their path, dies mid-transfer: every stream resumes
    through r4 at the process that holds it, none is refused."""
    net = SimNet(seed=86)
    r1, r2, r3, _r4 = _ring(net)
    r3.switch.terminators.set_strategies({"echo": "random"})
    alice = net.endpoint("alice", via=[r1])
    web_a, web_b = _hosts(net, (r3, r3))
    for endpoint in (alice, web_a, web_b):
        endpoint.enable_resume()
    net.run_for(KEEPALIVE_MEASURED)
    net.mesh_routes()
    size = MiB
    streams = []
    for seed in range(6):
        stream = alice.dial("echo")
        stream.write(_payload(size, seed))
        stream.write_eof()
        streams.append(stream)
    net.run_until(lambda: all(s.received > size // 4 for s in streams), within=30.0)
    net.kill(r2)
    net.run_until(lambda: all(s.ended is not None for s in streams), within=60.0)
    for seed, stream in enumerate(streams):
        assert stream.finished, stream.ended
        assert stream.read() == _payload(size, seed)
    resumed = sum(h.sessions.counters.get("resumes_accepted", 0) for h in (web_a, web_b))
    assert resumed == 6
    assert all(h.sessions.counters.get("resume_refused", 0) == 0 for h in (web_a, web_b))


def test_a_process_that_fails_the_open_before_accepting_gives_instance_gone() -> None:
    """The session's process lost its binding without its router hearing (the UNBIND was
    lost): the router offers it the open, it refuses, and no other process may take it, so
    the dialer reads `instance_gone` (which its SDK answers with a fresh dial), not the
    host's `refused` (which it would pass to the application)."""
    net = SimNet(seed=87)
    r1 = net.router("r1")
    web_a, web_b = _hosts(net, (r1, r1))
    alice = net.endpoint("alice", via=[r1])
    assert _echo(net, alice, b"handshake").finished
    key = alice.sessions.key_for("echo")
    assert key is not None
    holder, other = (web_a, web_b) if key.instance == "web-a" else (web_b, web_a)
    for listener in list(holder.listeners.values()):
        holder.unbind(listener, silently=True)
    net.run_for(0.1)
    refused = _echo(net, alice, b"lost")
    assert refused.ended is not None and refused.ended.code == "instance_gone"
    assert r1.counters["instance_gone"] == 1
    assert other.sessions.counters.get("resume_refused", 0) == 0
    assert other.listeners[1].accepted == []
