"""The router's WireGuard relay without sockets: links keyed by the X25519 key of their SVID.

Checked: a datagram is forwarded to the link holding the destination key, stamped with the
*source link's* key, only after that link presented a relay ticket for the pair; everything
else (no ticket, another identity's ticket, unknown key, oversized, empty, expired ticket,
stale epoch, congested destination) is dropped and counted, and the links stay up.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_router_switch import NET, Switch, _frame, _hello, _out
from umbranet.pki import IdentityFile
from umbranet.pki.tickets import Action, relay_service
from umbranet.router.links import SwitchLink
from umbranet.wire import ErrorCode, FrameType, decode_control, encode_control
from umbranet.wire.frames import MAX_WG_DATAGRAM

ANN = NET.identity("ann")
BEN = NET.identity("ben")
CAT = NET.identity("cat")
DAN = NET.identity("dan")
SEALED = b"\x04\x00\x00\x00" + bytes(range(200))  # what a transport-data datagram looks like


class FakeLink:
    pass


def _link(sw: Switch, identity: IdentityFile, speaks: bool = True) -> SwitchLink:
    """An endpoint link; `speaks`: it presents a relay ticket (to a fourth identity), which
    makes it a relay destination."""
    link = sw.forwarder.add_link(
        FakeLink(),
        identity.spiffe_id,
        "device",
        sw.clock.now(),
        noise_key=identity.noise_public_key,
    )
    assert sw.feed(link, _hello()) is None
    assert [f.type for f in _out(link)] == [FrameType.HELLO]
    if speaks:
        assert _allow(sw, link, identity, DAN) == []
    return link


def _allow(
    sw: Switch, link: SwitchLink, holder: IdentityFile, peer: IdentityFile, **kw: object
) -> list[object]:
    token = NET.signer.sign_ticket(
        holder.spiffe_id,
        relay_service(peer.noise_public_key),
        Action.RELAY,
        kw.pop("now", sw.clock.wall),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )[1]
    fields = {"ticket": token, "peer": peer.noise_public_key.hex()}
    assert sw.feed(link, _frame(FrameType.WG_RELAY_ALLOW, 0, encode_control(fields))) is None
    return list(_out(link))


def _datagram(to: IdentityFile, body: bytes = SEALED) -> object:
    return _frame(FrameType.WG_DATAGRAM, 0, to.noise_public_key + body)


def test_relays_allowed_pair_stamped_with_the_source_key() -> None:
    sw = Switch()
    a, b = _link(sw, ANN), _link(sw, BEN)
    assert _allow(sw, a, ANN, BEN) == []
    assert sw.feed(a, _datagram(BEN)) is None  # type: ignore[arg-type]
    (out,) = _out(b)
    assert out.type == FrameType.WG_DATAGRAM
    assert bytes(out.payload) == ANN.noise_public_key + SEALED
    assert sw.forwarder.counters["relay_datagrams"] == 1
    # one direction's ticket does not allow the other
    assert sw.feed(b, _datagram(ANN)) is None  # type: ignore[arg-type]
    assert _out(a) == []
    assert sw.forwarder.counters["relay_not_allowed"] == 1


def test_no_ticket_unknown_key_and_bad_sizes_are_counted_and_harmless() -> None:
    sw = Switch()
    a, b = _link(sw, ANN), _link(sw, BEN)
    assert sw.feed(a, _datagram(BEN)) is None  # type: ignore[arg-type]
    assert sw.forwarder.counters["relay_not_allowed"] == 1
    _allow(sw, a, ANN, CAT)  # cat has no link here
    assert sw.feed(a, _datagram(CAT)) is None  # type: ignore[arg-type]
    assert sw.forwarder.counters["relay_unknown_peer"] == 1
    big = _frame(FrameType.WG_DATAGRAM, 0, BEN.noise_public_key + bytes(MAX_WG_DATAGRAM + 1))
    short = _frame(FrameType.WG_DATAGRAM, 0, BEN.noise_public_key[:20])
    assert sw.feed(a, big, short) is None
    assert sw.forwarder.counters["relay_oversized"] == 1
    assert sw.forwarder.counters["relay_bad_datagram"] == 1
    assert _out(b) == []
    # the link still relays once allowed
    _allow(sw, a, ANN, BEN)
    assert sw.feed(a, _datagram(BEN)) is None  # type: ignore[arg-type]
    assert len(_out(b)) == 1


def test_ticket_of_another_identity_or_pair_is_refused_with_an_error() -> None:
    sw = Switch()
    a, _b, c = _link(sw, ANN), _link(sw, BEN), _link(sw, CAT)
    # cat presents ann's ticket for ann -> ben
    token = NET.signer.sign_ticket(
        ANN.spiffe_id, relay_service(BEN.noise_public_key), Action.RELAY, sw.clock.wall
    )[1]
    fields = {"ticket": token, "peer": BEN.noise_public_key.hex()}
    assert sw.feed(c, _frame(FrameType.WG_RELAY_ALLOW, 0, encode_control(fields))) is None
    (err,) = _out(c)
    assert err.type == FrameType.WG_RELAY_ERR
    body = decode_control(err.payload).fields
    assert body["code"] == ErrorCode.TICKET_WRONG_IDENTITY
    assert body["peer"] == BEN.noise_public_key.hex()
    # ann presents her ticket for ann -> cat as if it named ben
    token = NET.signer.sign_ticket(
        ANN.spiffe_id, relay_service(CAT.noise_public_key), Action.RELAY, sw.clock.wall
    )[1]
    fields = {"ticket": token, "peer": BEN.noise_public_key.hex()}
    assert sw.feed(a, _frame(FrameType.WG_RELAY_ALLOW, 0, encode_control(fields))) is None
    (err,) = _out(a)
    assert decode_control(err.payload).fields["code"] == ErrorCode.TICKET_WRONG_SERVICE
    # a dial ticket is not a relay ticket
    token = NET.signer.sign_ticket(
        ANN.spiffe_id, relay_service(BEN.noise_public_key), Action.DIAL, sw.clock.wall
    )[1]
    fields = {"ticket": token, "peer": BEN.noise_public_key.hex()}
    assert sw.feed(a, _frame(FrameType.WG_RELAY_ALLOW, 0, encode_control(fields))) is None
    (err,) = _out(a)
    assert decode_control(err.payload).fields["code"] == ErrorCode.TICKET_WRONG_SERVICE
    assert sw.feed(c, _datagram(BEN)) is None  # type: ignore[arg-type]
    assert sw.feed(a, _datagram(BEN)) is None  # type: ignore[arg-type]
    assert sw.forwarder.counters["relay_not_allowed"] == 2
    assert sw.forwarder.counters["relay_datagrams"] == 0


def test_expired_or_stale_allowance_stops_relaying() -> None:
    sw = Switch()
    a, b = _link(sw, ANN), _link(sw, BEN)
    _allow(sw, a, ANN, BEN, lifetime=timedelta(seconds=60))
    sw.clock.advance(61)
    assert sw.feed(a, _datagram(BEN)) is None  # type: ignore[arg-type]
    (err,) = _out(a)
    assert decode_control(err.payload).fields["code"] == ErrorCode.TICKET_EXPIRED
    assert _out(b) == []
    _allow(sw, a, ANN, BEN)
    sw.forwarder.epoch = 5  # a revocation the controller pushed
    assert sw.feed(a, _datagram(BEN)) is None  # type: ignore[arg-type]
    (err,) = _out(a)
    assert decode_control(err.payload).fields["code"] == ErrorCode.TICKET_STALE
    assert _out(b) == []


def test_congested_destination_drops_instead_of_queueing() -> None:
    sw = Switch()
    a, b = _link(sw, ANN), _link(sw, BEN)
    _allow(sw, a, ANN, BEN)
    sw.forwarder.relay.congested = lambda link: link is b
    assert sw.feed(a, _datagram(BEN)) is None  # type: ignore[arg-type]
    assert _out(b) == []
    assert sw.forwarder.counters["relay_queue_full"] == 1


def test_key_follows_the_newest_link_and_is_forgotten_with_it() -> None:
    sw = Switch()
    a, b1 = _link(sw, ANN), _link(sw, BEN)
    b2 = _link(sw, BEN)
    _allow(sw, a, ANN, BEN)
    sw.feed(a, _datagram(BEN))  # type: ignore[arg-type]
    assert _out(b1) == [] and len(_out(b2)) == 1
    sw.forwarder.link_gone(b2)
    sw.feed(a, _datagram(BEN))  # type: ignore[arg-type]
    assert len(_out(b1)) == 1  # back to the older link while it lives
    sw.forwarder.link_gone(b1)
    sw.feed(a, _datagram(BEN))  # type: ignore[arg-type]
    assert sw.forwarder.counters["relay_unknown_peer"] == 1
    sw.forwarder.link_gone(a)
    stats = sw.forwarder.relay.statistics()
    assert (stats["keys"], stats["allowances"]) == (0, 0)


def test_a_link_that_never_spoke_the_relay_is_not_a_destination() -> None:
    """A device's SDK link shares its key with its relay link but would choke on datagrams."""
    sw = Switch()
    a, b_relay = _link(sw, ANN), _link(sw, BEN)
    b_sdk = _link(sw, BEN, speaks=False)  # newer, same key
    _allow(sw, a, ANN, BEN)
    assert sw.feed(a, _datagram(BEN)) is None  # type: ignore[arg-type]
    assert _out(b_sdk) == [] and len(_out(b_relay)) == 1


def test_router_links_may_not_use_the_relay() -> None:
    sw = Switch()
    a = _link(sw, ANN)
    _allow(sw, a, ANN, BEN)
    # a router's link is never a relay destination, even if its certificate binds the key
    sw.forwarder.add_link(
        FakeLink(), BEN.spiffe_id, "router", sw.clock.now(), noise_key=BEN.noise_public_key
    )
    assert sw.feed(a, _datagram(BEN)) is None  # type: ignore[arg-type]
    assert sw.forwarder.counters["relay_unknown_peer"] == 1


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_allow_payloads_close_only_that_link_with_a_code(payload: bytes) -> None:
    sw = Switch()
    a, b = _link(sw, ANN), _link(sw, BEN)
    closing = sw.feed(a, _frame(FrameType.WG_RELAY_ALLOW, 0, payload))
    if closing is not None:
        assert closing[0] in {ErrorCode.BAD_CONTROL_PAYLOAD, ErrorCode.RATE_LIMITED}
    _allow(sw, b, BEN, ANN)
    assert sw.feed(b, _datagram(ANN)) is None  # type: ignore[arg-type]
