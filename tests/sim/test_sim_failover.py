"""A router on a stream's path dies mid-transfer: the end-to-end session moves to another
path and every byte arrives exactly once, in order (issue 11, item 5), on the real machines
in the simulated network."""

from __future__ import annotations

import random

import pytest

from umbranet.testing.simnet import SimEndpoint, SimNet, SimRouter, SimStream, echo
from umbranet.wire import ErrorCode

KEEPALIVE_MEASURED = 6.0
MiB = 1 << 20


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _ring(net: SimNet) -> list[SimRouter]:
    """r1-r2-r3 is the fast path, r1-r4-r3 the spare."""
    r1, r2, r3, r4 = (net.router(f"r{i}") for i in range(1, 5))
    net.link(r1, r2, latency=0.002)
    net.link(r2, r3, latency=0.002)
    net.link(r1, r4, latency=0.003)
    net.link(r4, r3, latency=0.003)
    return [r1, r2, r3, r4]


def _ready(net: SimNet, alice: SimEndpoint, web: SimEndpoint) -> None:
    alice.enable_resume()
    web.enable_resume()
    listener = web.listen("echo", echo)
    net.run_until(lambda: len(listener.bound) == len(web.links), within=1.0)
    net.run_for(KEEPALIVE_MEASURED)
    net.mesh_routes()


def _path(net: SimNet, since: int = 0) -> list[tuple[str, str]]:
    return [
        (r.src, r.dst)
        for r in net.trace.records[since:]
        if r.frame and r.what in ("DIAL", "CONNECT")
    ]


def _transfer_with_death(
    net: SimNet,
    alice: SimEndpoint,
    victim: SimRouter,
    size: int,
    seed: int,
    *,
    reroute: bool = False,
) -> SimStream:
    stream = alice.dial("echo")
    data = _payload(size, seed)
    stream.write(data)
    stream.write_eof()
    net.run_until(lambda: stream.received > size // 3, within=20.0)
    net.kill(victim)
    if reroute:
        # The controller learns of the dead links from the routers' reports and pushes new
        # routes (the routers that only knew a path through the victim have none meanwhile).
        net.run_until(lambda: net.trace.find("LINK_DOWN", dst=victim.name), within=30.0)
        net.run_for(1.0)
        net.mesh_routes()
    net.run_until(lambda: stream.ended is not None, within=60.0)
    return stream


@pytest.mark.parametrize("victim", ["r2", "r1"])
def test_a_router_dying_mid_transfer_loses_no_byte_and_the_app_sees_no_error(victim: str) -> None:
    net = SimNet(seed=51)
    routers = _ring(net)
    r1, _, r3, r4 = routers
    # alice's spare link goes to r4 so that losing her own router r1 leaves a path.
    alice = net.endpoint("alice", via=[r1, r4])
    web = net.endpoint("web", via=[r3])
    _ready(net, alice, web)
    size = 3 * MiB + 17
    stream = _transfer_with_death(net, alice, net.routers[victim], size, seed=5)
    print(net.trace.render(last=60))
    assert stream.finished, stream.ended
    assert stream.read() == _payload(size, 5)  # both directions: echo sent it all back
    before = _path(net)[:3]
    assert ("r1", "r2") in before
    moved = net.trace.first("RESUMED", src="alice")
    assert moved is not None
    after = [
        (r.src, r.dst)
        for r in net.trace.records
        if r.frame and r.what in ("DIAL", "CONNECT") and r.time >= moved.time - 1
    ]
    print("path before:", before, "after:", after)
    assert all(victim not in hop for hop in after)
    host = web.listeners[1].accepted[0]
    assert host.finished and host.received == size
    assert web.sessions.counters.get("resumes_accepted") == 1
    assert net.trace.find("STREAM_END", note="resume_timeout") == []


def test_a_three_hop_path_survives_its_middle_router() -> None:
    net = SimNet(seed=52)
    r1, r2, r3, r4, r5 = (net.router(f"r{i}") for i in range(1, 6))
    net.link(r1, r2, latency=0.002)
    net.link(r2, r3, latency=0.002)
    net.link(r3, r4, latency=0.002)
    net.link(r1, r5, latency=0.004)
    net.link(r5, r4, latency=0.004)
    alice = net.endpoint("alice", via=[r1])
    web = net.endpoint("web", via=[r4])
    _ready(net, alice, web)
    size = 2 * MiB + 5
    stream = _transfer_with_death(net, alice, r3, size, seed=6, reroute=True)
    assert stream.finished, stream.ended
    assert stream.read() == _payload(size, 6)
    assert ("r2", "r3") in _path(net)[:4]


def test_no_path_within_the_deadline_ends_the_stream_with_an_error_never_short() -> None:
    net = SimNet(seed=53)
    r1 = net.router("r1")
    alice = net.endpoint("alice", via=[r1])
    web = net.endpoint("web", via=[r1])
    alice.enable_resume(deadline=10.0)
    web.enable_resume(deadline=10.0)
    listener = web.listen("echo", echo)
    net.run_until(lambda: listener.bound, within=1.0)
    size = 4 * MiB
    stream = alice.dial("echo")
    stream.write(_payload(size, 7))
    stream.write_eof()
    net.run_until(lambda: stream.received > MiB, within=20.0)
    net.kill(r1)
    net.run_until(lambda: stream.ended is not None, within=60.0)
    assert stream.ended is not None and stream.ended.code == "resume_timeout"
    assert not stream.eof and not stream.finished
    assert stream.received < size


def _two_routers(net: SimNet) -> tuple[SimRouter, SimRouter, SimEndpoint, SimEndpoint]:
    r1, r2 = net.router("r1"), net.router("r2")
    alice = net.endpoint("alice", via=[r1, r2])
    web = net.endpoint("web", via=[r1, r2])
    _ready(net, alice, web)
    return r1, r2, alice, web


def test_a_router_stopping_moves_its_streams_to_the_other_router() -> None:
    net = SimNet(seed=54)
    r1, _, alice, _ = _two_routers(net)
    stream = alice.dial("echo", router=r1)
    stream.write(_payload(MiB, 8))
    stream.write_eof()
    net.run_until(lambda: stream.received > MiB // 4, within=10.0)
    r1.stop()  # GOAWAY shutting_down on every link: a path failure
    net.run_until(lambda: stream.ended is not None, within=30.0)
    assert stream.finished and stream.read() == _payload(MiB, 8)
    assert net.trace.first("RESUMED", src="alice") is not None


def test_a_link_closed_for_the_endpoint_s_credentials_ends_its_streams_without_moving() -> None:
    net = SimNet(seed=55)
    r1, _, alice, _ = _two_routers(net)
    stream = alice.dial("echo", router=r1)
    stream.write(b"hello")
    net.run_until(lambda: stream.received == 5, within=5.0)
    link = r1.link_to(alice)
    link.session.close(ErrorCode.CERT_REVOKED, "certificate revoked")
    port = next(p for p, held in r1._links.items() if held is link)
    r1._close(port, abort=False)
    net.run_until(lambda: stream.ended is not None, within=5.0)  # at once, not at a deadline
    assert stream.ended is not None and not stream.finished
    assert net.trace.find("RESUME_START", src="alice") == []


def test_the_host_s_own_router_dying_moves_the_stream_to_its_other_router() -> None:
    net = SimNet(seed=56)
    r1, r2, r3 = (net.router(f"r{i}") for i in range(1, 4))
    net.link(r1, r2, latency=0.002)
    net.link(r1, r3, latency=0.004)
    alice = net.endpoint("alice", via=[r1])
    web = net.endpoint("web", via=[r2, r3])  # bound at both; dials go via r2 (faster)
    _ready(net, alice, web)
    size = 2 * MiB + 3
    stream = _transfer_with_death(net, alice, r2, size, seed=9, reroute=True)
    assert stream.finished, stream.ended
    assert stream.read() == _payload(size, 9)
    assert _path(net)[:3] == [("alice", "r1"), ("r1", "r2"), ("r2", "web")]
    resumed = net.trace.first("RESUMED", src="web")
    assert resumed is not None and resumed.dst == "r3"
