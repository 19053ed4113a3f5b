"""Relay across two routers, without sockets: A is linked to router r1, B to router r2.

Checked: r2 announces B's key to r1, r1 sends A's ticket then A's datagrams over the router
link, r2 checks the ticket itself and delivers the datagram stamped with A's key; a forged,
expired or misdirected ticket forwarded to r2 is refused there with its code, counted, and
answered so r1 tells A; a datagram from a router with no ticket checked at r2 goes nowhere.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_router_relay import ANN, BEN, CAT, SEALED, FakeLink, _allow, _datagram, _link
from tests.unit.test_router_switch import NET, Switch, _frame, _out
from umbranet.pki.tickets import Action, relay_service
from umbranet.router.links import SwitchLink
from umbranet.testing import LocalNetwork
from umbranet.wire import ErrorCode, FrameType, decode_control, encode_control

R1 = NET.identity("r1")
R2 = NET.identity("r2")


def _mesh() -> tuple[Switch, Switch, SwitchLink, SwitchLink]:
    """Two routers and the link between them (r1 opened it), HELLOs done."""
    r1, r2 = Switch(), Switch()
    to_r2 = r1.forwarder.add_link(FakeLink(), R2.spiffe_id, "router", r1.clock.now(), opener=True)
    to_r1 = r2.forwarder.add_link(FakeLink(), R1.spiffe_id, "router", r2.clock.now())
    _pump(r1, to_r2, r2, to_r1)
    assert to_r2.session.ready and to_r1.session.ready
    return r1, r2, to_r2, to_r1


def _pump(r1: Switch, to_r2: SwitchLink, r2: Switch, to_r1: SwitchLink) -> None:
    """Carry frames both ways over the router link until it is quiet (bounded)."""
    for _ in range(6):
        r1.forwarder.relay.poll_announce()
        r2.forwarder.relay.poll_announce()
        one, two = _out(to_r2), _out(to_r1)
        if not one and not two:
            return
        if one:
            assert r2.feed(to_r1, *one) is None
        if two:
            assert r1.feed(to_r2, *two) is None
    raise AssertionError("the router link did not settle")


def test_a_pair_on_two_routers_is_relayed_over_the_mesh() -> None:
    r1, r2, to_r2, to_r1 = _mesh()
    a, b = _link(r1, ANN), _link(r2, BEN)
    _pump(r1, to_r2, r2, to_r1)  # r2 tells r1 that it holds ben's key
    assert r1.forwarder.relay.statistics()["remote_keys"] >= 1
    assert _allow(r1, a, ANN, BEN) == []
    assert r1.feed(a, _datagram(BEN)) is None  # type: ignore[arg-type]
    assert r1.feed(a, _datagram(BEN, b"second")) is None  # type: ignore[arg-type]
    _pump(r1, to_r2, r2, to_r1)
    got = _out(b)
    assert [bytes(f.payload) for f in got] == [
        ANN.noise_public_key + SEALED,
        ANN.noise_public_key + b"second",
    ]
    assert r1.forwarder.counters["relay_mesh_datagrams"] == 2
    assert r2.forwarder.counters["relay_mesh_allowances"] == 1  # the ticket went once
    assert r2.forwarder.counters["relay_datagrams"] == 2
    # ben's own ticket is needed the other way
    assert r2.feed(b, _datagram(ANN)) is None  # type: ignore[arg-type]
    _pump(r1, to_r2, r2, to_r1)
    assert _out(a) == []
    assert r2.forwarder.counters["relay_not_allowed"] == 1


def _forwarded(token: str, peer: bytes, source: bytes, subject: str) -> object:
    fields = {
        "ticket": token,
        "peer": peer.hex(),
        "source": source.hex(),
        "subject": subject,
        "binding": "",
    }
    return _frame(FrameType.WG_RELAY_ALLOW, 0, encode_control(fields))


def _mesh_datagram(peer: bytes, source: bytes) -> object:
    return _frame(FrameType.WG_DATAGRAM, 0, peer + source + SEALED)


def test_forged_expired_and_misdirected_tickets_are_refused_at_the_second_router() -> None:
    r1, r2, to_r2, to_r1 = _mesh()
    a, b = _link(r1, ANN), _link(r2, BEN)
    _pump(r1, to_r2, r2, to_r1)
    service = relay_service(BEN.noise_public_key)
    forger = LocalNetwork()  # another CA: its signature is not the controller's
    cases = [
        (forger.signer.sign_ticket(ANN.spiffe_id, service, Action.RELAY, r2.clock.wall)[1],
         ErrorCode.TICKET_INVALID),
        (NET.signer.sign_ticket(ANN.spiffe_id, service, Action.RELAY,
                                r2.clock.wall - timedelta(hours=1))[1],
         ErrorCode.TICKET_EXPIRED),
        (NET.signer.sign_ticket(ANN.spiffe_id, relay_service(CAT.noise_public_key),
                                Action.RELAY, r2.clock.wall)[1],
         ErrorCode.TICKET_WRONG_SERVICE),
    ]  # fmt: skip
    for token, code in cases:
        frame = _forwarded(token, BEN.noise_public_key, ANN.noise_public_key, ANN.spiffe_id)
        assert r2.feed(to_r1, frame) is None  # type: ignore[arg-type]
        (err,) = _out(to_r1)
        assert err.type == FrameType.WG_RELAY_ERR
        body = decode_control(err.payload).fields
        assert body["code"] == code
        assert body["source"] == ANN.noise_public_key.hex()
        assert r2.forwarder.counters[code.code] >= 1
        # r1 passes the refusal to ann's link
        assert r1.feed(to_r2, err) is None
        (told,) = _out(a)
        assert told.type == FrameType.WG_RELAY_ERR
        assert decode_control(told.payload).fields["code"] == code
    assert r1.forwarder.counters["relay_mesh_errors"] == len(cases)
    # none of them lets a datagram through
    mesh = _mesh_datagram(BEN.noise_public_key, ANN.noise_public_key)
    assert r2.feed(to_r1, mesh) is None  # type: ignore[arg-type]
    assert _out(b) == []
    assert r2.forwarder.counters["relay_not_allowed"] == 1
    assert r2.forwarder.counters["relay_mesh_allowances"] == 0


def test_a_ticket_checked_at_the_second_router_lapses_with_its_expiry() -> None:
    r1, r2, _to_r2, to_r1 = _mesh()
    _link(r1, ANN)
    b = _link(r2, BEN)
    token = NET.signer.sign_ticket(
        ANN.spiffe_id, relay_service(BEN.noise_public_key), Action.RELAY, r2.clock.wall
    )[1]
    frame = _forwarded(token, BEN.noise_public_key, ANN.noise_public_key, ANN.spiffe_id)
    assert r2.feed(to_r1, frame) is None  # type: ignore[arg-type]
    mesh = _mesh_datagram(BEN.noise_public_key, ANN.noise_public_key)
    assert r2.feed(to_r1, mesh) is None  # type: ignore[arg-type]
    assert len(_out(b)) == 1
    r2.clock.advance(timedelta(hours=1))
    assert r2.feed(to_r1, mesh) is None  # type: ignore[arg-type]
    assert _out(b) == []
    (err,) = _out(to_r1)
    assert decode_control(err.payload).fields["code"] == ErrorCode.TICKET_EXPIRED
    assert r2.forwarder.counters["ticket_expired"] == 1


def test_a_key_leaving_the_second_router_is_withdrawn_at_the_first() -> None:
    r1, r2, to_r2, to_r1 = _mesh()
    a, b = _link(r1, ANN), _link(r2, BEN)
    _pump(r1, to_r2, r2, to_r1)
    r2.forwarder.link_gone(b)
    _pump(r1, to_r2, r2, to_r1)
    _allow(r1, a, ANN, BEN)
    assert r1.feed(a, _datagram(BEN)) is None  # type: ignore[arg-type]
    assert r1.forwarder.counters["relay_unknown_peer"] == 1
    assert r1.forwarder.counters["relay_mesh_datagrams"] == 0


def test_a_neighbour_is_owed_an_announcement_only_after_the_keys_changed() -> None:
    # The switch polls announcements on every dial: only a change may make work for it.
    r1, r2, to_r2, to_r1 = _mesh()
    _pump(r1, to_r2, r2, to_r1)
    assert not r2.forwarder.relay.mesh.due()
    b = _link(r2, BEN)
    assert r2.forwarder.relay.mesh.due()
    _pump(r1, to_r2, r2, to_r1)
    assert not r2.forwarder.relay.mesh.due()
    assert r1.forwarder.relay.mesh.remote.get(BEN.noise_public_key) is to_r2
    r2.forwarder.link_gone(b)
    assert r2.forwarder.relay.mesh.due()


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_garbage_from_a_neighbour_is_refused_with_a_code_and_delivers_nothing(
    allow: bytes, datagram: bytes
) -> None:
    _r1, r2, _to_r2, to_r1 = _mesh()
    b = _link(r2, BEN)
    closing = r2.feed(
        to_r1,
        _frame(FrameType.WG_DATAGRAM, 0, datagram),  # type: ignore[arg-type]
        _frame(FrameType.WG_RELAY_ALLOW, 0, allow),  # type: ignore[arg-type]
    )
    if closing is not None:
        assert closing[0] in {ErrorCode.BAD_CONTROL_PAYLOAD, ErrorCode.RATE_LIMITED}
    assert _out(b) == []
    assert r2.forwarder.counters["relay_datagrams"] == 0
