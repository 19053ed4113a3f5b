"""Precedence across routers on the simulated network: a standby host bound at the dialer's
own router does not take dials while a primary is bound at another router; it takes them
when every route to the primary refuses (crank-back) and once the primary is gone."""

from __future__ import annotations

from umbranet.testing.simnet import SimEndpoint, SimListener, SimNet, SimRouter, echo

KEEPALIVE_MEASURED = 6.0  # every router link has a measured RTT


def _line() -> tuple[SimNet, dict[str, SimRouter], SimEndpoint, SimEndpoint, SimListener]:
    """r1 - r2 - r3; alice and a standby host at r1, the primary host at r3."""
    net = SimNet(seed=61)
    r = {name: net.router(name) for name in ("r1", "r2", "r3")}
    net.link(r["r1"], r["r2"], latency=0.002)
    net.link(r["r2"], r["r3"], latency=0.002)
    alice = net.endpoint("alice", via=[r["r1"]])
    spare = net.endpoint("spare", via=[r["r1"]])
    web = net.endpoint("web", via=[r["r3"]])
    standby, primary = spare.listen("echo", echo), web.listen("echo", echo)
    net.run_until(lambda: standby.bound and primary.bound, within=1.0)
    for binding in r["r1"].switch.terminators.all():
        binding.precedence = 1  # as `ctx.listen("echo", precedence="standby")` binds
    net.run_for(KEEPALIVE_MEASURED)
    net.mesh_routes()
    return net, r, alice, web, primary


def _host_of_one_dial(net: SimNet, alice: SimEndpoint) -> list[str]:
    """The hosts one echo dial was offered to, in order (every byte checked)."""
    mark = len(net.trace.records)
    stream = alice.dial("echo")
    stream.write(b"which host?")
    stream.write_eof()
    net.run_until(lambda: stream.ended is not None, within=10.0)
    assert stream.finished and stream.read() == b"which host?"
    return [x.dst for x in net.trace.records[mark:] if x.frame and x.what == "CONNECT"]


def test_a_remote_primary_takes_the_dials_before_a_local_standby() -> None:
    net, r, alice, _web, _primary = _line()
    assert r["r1"].switch.routes.remote().keys() == {"echo"}  # routed on, though bound here
    assert _host_of_one_dial(net, alice) == ["web"]
    assert _host_of_one_dial(net, alice) == ["web"]


def test_the_local_standby_takes_a_dial_every_route_to_the_primary_refused() -> None:
    net, r, alice, web, primary = _line()
    # The primary forgets its binding without telling its router (the UNBIND is lost):
    # r3 offers it the dial, it refuses, and the refusal comes back to r1.
    web.unbind(primary, silently=True)
    net.run_for(0.1)
    assert _host_of_one_dial(net, alice) == ["web", "spare"]
    assert r["r1"].counters["dial_retried"] == 1


def test_with_the_primary_gone_the_controller_sends_dials_to_the_standby() -> None:
    net, r, alice, web, primary = _line()
    web.unbind(primary)
    net.run_for(0.1)
    assert r["r3"].switch.terminators.all() == []
    net.mesh_routes()  # r3 reports no host: the standby at r1 is now the best there is
    assert r["r1"].switch.routes.remote() == {}
    assert _host_of_one_dial(net, alice) == ["spare"]
