"""Faults on the simulated network, in virtual time: a router that goes silent, a partition
in the middle of a transfer, a carrier that breaks. Whatever happens, a stream ends with a
code saying why, and a transfer cut short never looks finished."""

from __future__ import annotations

import random

import pytest

from umbranet.proto.link import LinkTimers
from umbranet.testing.simnet import (
    SimEndpoint,
    SimListener,
    SimNet,
    SimRouter,
    SimStream,
    echo,
    sink,
)

MiB = 1024 * 1024
TIMERS = LinkTimers()  # the defaults users get
DETECTED_WITHIN = TIMERS.silent_after + TIMERS.ping_interval


def _one_router(seed: int) -> tuple[SimNet, SimEndpoint, SimEndpoint]:
    net = SimNet(seed=seed)
    r1 = net.router("r1")
    web = net.endpoint("web", via=[r1])
    alice = net.endpoint("alice", via=[r1])
    return net, alice, web


def _open_echo(net: SimNet, alice: SimEndpoint, web: SimEndpoint) -> tuple[SimStream, SimStream]:
    listener = web.listen("echo", echo)
    net.run_until(lambda: listener.bound, within=1.0)
    stream = alice.dial("echo")
    stream.write(b"hello")
    net.run_until(lambda: stream.received == 5, within=1.0)
    (host,) = listener.accepted
    return stream, host


def _transfer(
    net: SimNet, alice: SimEndpoint, listener: SimListener, size: int
) -> tuple[SimStream, SimStream]:
    """A transfer from alice to the listener, under way: more than a MiB arrived."""
    stream = alice.dial("bulk")
    stream.write(random.Random(4).randbytes(size))
    stream.write_eof()
    net.run_until(lambda: bool(listener.accepted) and listener.accepted[0].received > MiB, 5.0)
    return stream, listener.accepted[0]


def test_a_silent_router_is_detected_by_keepalive_within_its_deadline() -> None:
    net, alice, web = _one_router(seed=3)
    stream, host = _open_echo(net, alice, web)
    net.run_for(2 * TIMERS.ping_interval)  # an idle link: only keepalives keep it alive
    assert stream.ended is None and host.ended is None
    r1 = net.routers["r1"]
    killed_at = net.now
    net.kill(r1)
    net.run_until(lambda: stream.ended and host.ended, within=DETECTED_WITHIN)
    for name, end in (("alice", stream.ended), ("web", host.ended)):
        down = net.trace.first("LINK_DOWN", src=name)
        assert down is not None and down.note.startswith("peer_silent"), down
        assert killed_at < down.time <= killed_at + DETECTED_WITHIN
        assert end is not None and end.code == "peer_gone", end
    assert not stream.eof and not host.eof
    # Both kept asking; the dead router never read a PING nor answered one.
    assert net.trace.find("PING", src="alice", dst="r1", note="unread")
    assert [r for r in net.trace.find("PONG", src="r1") if r.time > killed_at] == []


def test_a_partition_during_a_transfer_ends_the_stream_with_an_error() -> None:
    net, alice, web = _one_router(seed=4)
    listener = web.listen("bulk", sink)
    net.run_until(lambda: listener.bound, within=1.0)
    size = 16 * MiB
    dialer, host = _transfer(net, alice, listener, size)
    r1 = net.routers["r1"]
    net.partition(alice, r1)
    cut_at = net.now
    net.run_until(lambda: host.ended is not None, within=DETECTED_WITHIN)
    # Never a silent truncation: the host got part of the stream and no sealed FIN, so
    # the stream did not finish; it ended with why.
    assert host.ended is not None and host.ended.code == "peer_gone"
    assert 0 < host.received < size
    assert not host.eof and not host.finished
    assert net.trace.find("DATA", dst="web", note="FIN") == []
    # The trace tells the story: the partition, the router giving up on alice's silent
    # link, its RESET to web.
    partition = net.trace.first("PARTITION")
    router_down = net.trace.first("LINK_DOWN", src="r1", dst="alice")
    reset = net.trace.first("RESET", src="r1", dst="web")
    assert partition is not None and router_down is not None and reset is not None
    assert router_down.note.startswith("peer_gone")
    assert "peer_gone" in reset.note
    assert cut_at < router_down.time <= reset.time <= cut_at + DETECTED_WITHIN
    # The dialer learns it the same way, by its own keepalive.
    net.run_until(lambda: dialer.ended is not None, within=DETECTED_WITHIN)
    assert dialer.ended is not None and dialer.ended.code == "peer_gone"
    # Healing does not revive what ended, nor deliver the rest of the stream.
    received = host.received
    net.heal(alice, r1)
    net.run_for(1.0)
    assert host.received == received and host.ended.code == "peer_gone"
    assert net.trace.first("HEAL") is not None


def test_a_broken_carrier_ends_its_circuits_at_once() -> None:
    net, alice, web = _one_router(seed=8)
    stream, host = _open_echo(net, alice, web)
    r1 = net.routers["r1"]
    broken_at = net.now
    net.link_down(alice, r1)
    net.run_until(lambda: stream.ended and host.ended, within=1.0)
    assert stream.ended is not None and stream.ended.code == "peer_gone"
    assert host.ended is not None and host.ended.code == "peer_gone"
    reset = net.trace.first("RESET", src="r1", dst="web")
    assert reset is not None and reset.time - broken_at < TIMERS.ping_interval
    assert r1.switch.circuits == 0


def test_a_dial_into_a_dead_router_fails_at_its_own_deadline() -> None:
    net, alice, web = _one_router(seed=9)
    listener = web.listen("echo", echo)
    net.run_until(lambda: listener.bound, within=1.0)
    net.kill(net.routers["r1"])
    dialed_at = net.now
    stream = alice.dial("echo", timeout=3.0)
    net.run_until(lambda: stream.ended is not None, within=TIMERS.silent_after)
    assert stream.ended is not None and stream.ended.code == "dial_timeout"
    failed = net.trace.first("DIAL_FAILED", src="alice")
    assert failed is not None and failed.time == pytest.approx(dialed_at + 3.0)  # not keepalive
    assert not stream.opened


def test_after_a_router_dies_the_service_is_reached_through_the_other() -> None:
    net = SimNet(seed=10)
    r1, r2 = net.router("r1"), net.router("r2")
    web = net.endpoint("web", via=[r1, r2])
    alice = net.endpoint("alice", via=[r1, r2])
    listener = web.listen("echo", echo)
    net.run_until(lambda: sorted(listener.bound) == ["r1", "r2"], within=1.0)
    first, _ = _open_echo_on(net, alice, listener, r1)
    killed_at = net.now
    net.kill(r1)
    net.run_until(lambda: first.ended is not None, within=DETECTED_WITHIN)
    assert first.ended is not None and first.ended.code == "peer_gone"
    assert net.now - killed_at <= DETECTED_WITHIN
    # The dead router's links are down at both endpoints; a new dial takes the live one.
    assert alice.links["r1"].down is not None
    second = alice.dial("echo")
    assert second.link.router == "r2"
    second.write(b"again")
    second.write_eof()
    net.run_until(lambda: second.ended is not None, within=1.0)
    assert second.finished and second.read() == b"again"


def _open_echo_on(
    net: SimNet, alice: SimEndpoint, listener: SimListener, router: SimRouter
) -> tuple[SimStream, SimStream]:
    stream = alice.dial("echo", router=router)
    stream.write(b"hello")
    net.run_until(lambda: stream.received == 5, within=1.0)
    return stream, listener.accepted[-1]


def test_an_endpoint_that_leaves_says_goodbye_and_is_forgotten_at_once() -> None:
    net, alice, web = _one_router(seed=12)
    stream, host = _open_echo(net, alice, web)
    r1 = net.routers["r1"]
    left_at = net.now
    web.close()
    net.run_until(lambda: stream.ended is not None, within=1.0)
    # A goodbye is not a silence: nobody waits for keepalive.
    assert net.now - left_at < TIMERS.ping_interval
    assert stream.ended is not None and stream.ended.code == "host_gone"  # the host's link
    assert host.ended is not None and host.ended.code == "peer_gone"  # its own link is gone
    goaway = net.trace.first("GOAWAY", src="web", dst="r1")
    assert goaway is not None and goaway.note.startswith("no_error")
    assert len(r1.switch.terminators) == 0 and r1.switch.circuits == 0
    again = alice.dial("echo")
    net.run_until(lambda: again.ended is not None, within=1.0)
    assert again.ended is not None and again.ended.code == "no_terminator"


def test_a_stopping_router_says_so_and_its_endpoints_end_their_circuits_at_once() -> None:
    net, alice, web = _one_router(seed=13)
    stream, host = _open_echo(net, alice, web)
    stopped_at = net.now
    net.routers["r1"].stop()
    net.run_until(lambda: stream.ended and host.ended, within=1.0)
    assert net.now - stopped_at < TIMERS.ping_interval
    for name, end in (("alice", stream.ended), ("web", host.ended)):
        down = net.trace.first("LINK_DOWN", src=name)
        assert down is not None and down.note.startswith("shutting_down"), down
        assert end is not None and end.code == "peer_gone"
    assert not stream.eof and not host.eof


def test_a_lost_hop_ends_the_dialer_s_circuit_with_peer_gone() -> None:
    net = SimNet(seed=14)
    r1, r2 = net.router("r1"), net.router("r2")
    net.link(r1, r2, latency=0.02)
    alice = net.endpoint("alice", via=[r1])
    web = net.endpoint("web", via=[r2])
    listener = web.listen("echo", echo)
    net.route(r1, "echo", via=r2)
    net.run_until(lambda: listener.bound, within=1.0)
    stream, host = _open_echo_on(net, alice, listener, r1)
    net.partition(r1, r2)
    net.run_until(lambda: stream.ended and host.ended, within=DETECTED_WITHIN)
    assert host.ended is not None and host.ended.code == "peer_gone"
    assert stream.ended is not None and stream.ended.code == "peer_gone", stream.ended
