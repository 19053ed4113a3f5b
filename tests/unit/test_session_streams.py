"""Streams opened inside an existing end-to-end session (issue 11, item 6), sans-IO: no new
Noise handshake, the first data rides with the open (0-RTT), replays are refused and counted
by the host, and every stream's ticket is still checked (service, port, revocation epoch)."""

from __future__ import annotations

import functools
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_resume_machine import (
    ALICE,
    NET,
    SERVICE,
    WEB,
    MovingPair,
    _credentials,
    _decode,
    _drain,
    _instant,
    _now,
    _reset_code,
    _ticket,
)
from umbranet.pki.tickets import Action
from umbranet.proto.circuit import Circuit, State
from umbranet.proto.e2e import HostHandshake
from umbranet.proto.endpoint import EndpointLink, Incoming
from umbranet.proto.flow import MIN_WINDOW
from umbranet.proto.resume import is_open_blob
from umbranet.testing.clock import FakeClock
from umbranet.wire import ErrorCode, Frame, FrameType, decode_control, encode_control
from umbranet.wire.control import encode_error


class Opened:
    """A dialer's in-session circuit and what the host made of its OPEN."""

    def __init__(self, dialer: Circuit, host: Circuit, connect: Frame) -> None:
        self.dialer, self.host, self.connect = dialer, host, connect

    def settle(self) -> None:
        for _ in range(1000):
            out_d = _decode(self.dialer.poll_transmit())
            out_h = _decode(self.host.poll_transmit())
            for frame in out_h:
                self.dialer.handle_frame(
                    Frame(frame.type, frame.flags, self.dialer.id, frame.payload), _now()
                )
            for frame in out_d:
                self.host.handle_frame(
                    Frame(frame.type, frame.flags, self.host.id, frame.payload), _now()
                )
            if not out_d and not out_h:
                return


def _connect_for(dialer: Circuit, circuit_id: int, binding: str = SERVICE) -> Frame:
    """The CONNECT the host's router makes of the dialer's DIAL (taken from `dialer`)."""
    (dial,) = _decode(dialer.poll_transmit())
    ctl = decode_control(dial.payload)
    fields = {
        "service": binding,
        "binding": 1,
        "ticket": ctl.str_field("ticket"),
        "dialer": ALICE.spiffe_id,
        "window": ctl.int_field("window"),
    }
    return Frame(FrameType.CONNECT, 0, circuit_id, encode_control(fields, ctl.blob))


def _open(
    pair: MovingPair,
    *,
    stream: int = 1,
    early: bytes = b"GET / HTTP/1.1\r\n\r\n",
    ticket: str | None = None,
    port: int | None = None,
    binding: str = SERVICE,
    min_epoch: int = 0,
    ports: frozenset[int] | None = None,
) -> Opened:
    secret, peer = pair.dialer.resume_secret, pair.dialer.peer
    assert secret is not None and peer is not None
    dialer = Circuit.open_in_session(
        100 + stream,
        binding,
        secret=secret,
        peer=peer,
        stream=stream,
        ticket=ticket or _ticket(ALICE, Action.DIAL, binding),
        nonce=pair.sessions.nonce(),
        early=early,
        port=port,
    )
    connect = _connect_for(dialer, 200 + stream, binding)
    assert is_open_blob(decode_control(connect.payload).blob)
    return Opened(dialer, _offer(pair, connect, binding, min_epoch, ports), connect)


def _offer(
    pair: MovingPair,
    connect: Frame,
    binding: str = SERVICE,
    min_epoch: int = 0,
    ports: frozenset[int] | None = None,
) -> Circuit:
    bind = HostHandshake(
        binding,
        _ticket(WEB, Action.BIND, binding),
        _credentials(WEB),
        min_epoch=min_epoch,
        ports=ports,
    )
    return pair.sessions.accept(connect.circuit, connect, bind, MIN_WINDOW, _instant())


def test_a_later_stream_opens_in_the_session_with_its_first_data_and_no_handshake() -> None:
    pair = MovingPair()
    opened = _open(pair)
    host = opened.host
    # The host holds the early data before any round trip, from the proven peer.
    assert host.state is State.OPEN and host.in_session
    assert host.peer is not None and host.peer.spiffe_id == ALICE.spiffe_id
    assert _drain(host) == b"GET / HTTP/1.1\r\n\r\n"
    host.write(b"HTTP/1.1 200 OK\r\n\r\n")  # answered in the host's first flight
    opened.settle()
    assert opened.dialer.state is State.OPEN
    assert _drain(opened.dialer) == b"HTTP/1.1 200 OK\r\n\r\n"
    opened.dialer.write(b"more")
    opened.dialer.write_eof()
    host.write_eof()
    opened.settle()
    assert _drain(host) == b"more"
    assert host.state is State.CLOSED and host.error is not None and host.error.clean
    assert pair.sessions.counters["streams_opened_in_session"] == 1
    # Each stream has its own keys and its own session id for resumes.
    assert opened.dialer.session_id not in (None, pair.dialer.session_id)


def test_a_replayed_open_is_refused_and_counted() -> None:
    pair = MovingPair()
    opened = _open(pair, stream=1)
    again = _offer(pair, Frame(FrameType.CONNECT, 0, 300, opened.connect.payload))
    assert again is not opened.host and again.state is State.CLOSED
    assert _reset_code(_decode(again.poll_transmit())) is ErrorCode.REPLAYED
    assert pair.sessions.counters["replayed"] == 1
    assert _open(pair, stream=2).host.state is State.OPEN  # a new number is fine


def test_an_open_with_tampered_early_data_or_an_unknown_session_is_refused() -> None:
    pair = MovingPair()
    opened = _open(pair, stream=1)
    ctl = decode_control(opened.connect.payload)
    tampered = bytearray(ctl.blob)
    tampered[-1] ^= 1
    fields = dict(ctl.fields)
    circuit = _offer(
        pair, Frame(FrameType.CONNECT, 0, 301, encode_control(fields, bytes(tampered)))
    )
    assert _reset_code(_decode(circuit.poll_transmit())) is ErrorCode.RESUME_REFUSED
    stranger = MovingPair()  # another session, unknown to this host
    circuit = _offer(pair, _open(stranger, stream=1).connect)
    assert _reset_code(_decode(circuit.poll_transmit())) is ErrorCode.RESUME_REFUSED
    assert pair.sessions.counters["resume_refused"] == 2


def test_each_stream_s_ticket_is_checked_for_its_service_and_port() -> None:
    pair = MovingPair()
    # A stream to another service of the same host needs a ticket for that service.
    wrong = _open(pair, stream=1, binding="admin", ticket=_ticket(ALICE, Action.DIAL, SERVICE))
    assert _reset_code(_decode(wrong.host.poll_transmit())) is ErrorCode.PEER_NOT_AUTHORIZED
    right = _open(pair, stream=2, binding="admin")
    assert right.host.state is State.OPEN and right.host.service == "admin"
    # A port the ticket does not grant, or the host does not serve.
    _, port_ticket = NET.signer.sign_ticket(ALICE.spiffe_id, SERVICE, Action.DIAL, _now(), port=443)
    asked = _open(pair, stream=3, port=80, ticket=port_ticket)
    assert _reset_code(_decode(asked.host.poll_transmit())) is ErrorCode.PORT_NOT_GRANTED
    served = _open(pair, stream=4, port=443, ticket=port_ticket, ports=frozenset({8443}))
    assert _reset_code(_decode(served.host.poll_transmit())) is ErrorCode.PORT_NOT_GRANTED
    granted = _open(pair, stream=5, port=443, ticket=port_ticket, ports=frozenset({443}))
    assert granted.host.peer is not None and granted.host.peer.port == 443


@pytest.mark.parametrize("why", ["revoked", "expired"])
def test_a_revoked_identity_cannot_open_a_stream_in_its_existing_session(why: str) -> None:
    pair = MovingPair()
    if why == "revoked":
        # The host heard of a revocation (epoch 1): tickets from before it are refused.
        opened = _open(pair, stream=1, min_epoch=1)
        frames = _decode(opened.host.poll_transmit())
        assert _reset_code(frames) is ErrorCode.TICKET_STALE
    else:
        _, old = NET.signer.sign_ticket(
            ALICE.spiffe_id, SERVICE, Action.DIAL, _now() - timedelta(hours=2), timedelta(hours=1)
        )
        opened = _open(pair, stream=1, ticket=old)
        frames = _decode(opened.host.poll_transmit())
        assert _reset_code(frames) is ErrorCode.PEER_NOT_AUTHORIZED
    assert opened.host.state is State.CLOSED
    # The refusal reaches the dialer as the end of its dial, never as an open stream.
    for frame in frames:
        opened.dialer.handle_frame(Frame(frame.type, 0, opened.dialer.id, frame.payload), _now())
    assert opened.dialer.state is State.CLOSED and opened.dialer.error is not None


def test_a_stream_opened_in_the_session_resumes_on_its_own() -> None:
    pair = MovingPair()
    opened = _open(pair, stream=1, early=b"")
    opened.settle()
    pair.sessions.opened(opened.host)
    opened.dialer.write(b"z" * 50_000)
    opened.settle()
    assert len(_drain(opened.host)) == 50_000
    opened.dialer.detach(ErrorCode.PEER_GONE, "hop lost")
    opened.host.detach(ErrorCode.PEER_GONE, "hop lost")
    opened.dialer.write(b"after")
    opened.dialer.resume_dial(400, _ticket(ALICE, Action.DIAL), pair.sessions.nonce())
    moved = _offer(pair, _connect_for(opened.dialer, 401))
    assert moved is opened.host
    opened.settle()
    assert _drain(opened.host) == b"after"


_FUZZ_PAIR: list[MovingPair] = []


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from([1, 4]),
    body=st.binary(min_size=0, max_size=200),
    flip=st.integers(0, 10_000),
)
def test_any_resume_or_open_blob_a_router_makes_up_is_refused_never_raises(
    kind: int, body: bytes, flip: int
) -> None:
    if not _FUZZ_PAIR:
        _FUZZ_PAIR.append(MovingPair())
    pair = _FUZZ_PAIR[0]
    real = _open(pair, stream=10_000 + flip).connect if kind == 4 else None
    blob = b"UMR\x01" + bytes([kind]) + body
    if real is not None and body:
        mutated = bytearray(decode_control(real.payload).blob)
        mutated[flip % len(mutated)] ^= 1 + body[0] % 255
        blob = bytes(mutated)
    fields = {
        "service": SERVICE,
        "binding": 1,
        "ticket": _ticket(ALICE, Action.DIAL),
        "dialer": ALICE.spiffe_id,
        "window": MIN_WINDOW,
    }
    circuit = _offer(pair, Frame(FrameType.CONNECT, 0, 999, encode_control(fields, blob)))
    if circuit.state is not State.CLOSED:
        # Not a RESUME/OPEN shape at all: taken as a Noise message 1 and answered (or not).
        assert not circuit.in_session and circuit.resumes == 0
    else:
        assert circuit.poll_transmit()  # a RESET says why
    assert pair.host.state is State.OPEN  # the real session is untouched


def _deferred(pair: MovingPair, stream: int = 1) -> Circuit:
    secret, peer = pair.dialer.resume_secret, pair.dialer.peer
    assert secret is not None and peer is not None
    return Circuit.open_in_session(
        100 + stream,
        SERVICE,
        secret=secret,
        peer=peer,
        stream=stream,
        ticket=_ticket(ALICE, Action.DIAL, SERVICE),
        nonce=pair.sessions.nonce(),
        deferred=True,
    )


def _offer_dial(pair: MovingPair, dialer: Circuit, stream: int = 1) -> Opened:
    connect = _connect_for(dialer, 200 + stream)
    return Opened(dialer, _offer(pair, connect), connect)


def test_a_deferred_open_carries_the_first_writes_as_early_data() -> None:
    pair = MovingPair()
    dialer = _deferred(pair)
    assert dialer.deferred is not None
    dialer.write(b"GET / ")
    dialer.write(b"HTTP/1.1\r\n\r\n")
    opened = _offer_dial(pair, dialer)  # the DIAL is built here, with both writes in it
    assert dialer.deferred is None
    assert _drain(opened.host) == b"GET / HTTP/1.1\r\n\r\n"
    assert pair.sessions.counters["streams_with_early_data"] == 1
    opened.host.write(b"200")
    opened.settle()
    assert dialer.state is State.OPEN and _drain(dialer) == b"200"


def test_a_deferred_open_with_more_than_the_early_limit_sends_the_rest_once_open() -> None:
    pair = MovingPair()
    dialer = _deferred(pair)
    payload = bytes(range(256)) * 100  # 25,600 bytes: over the 16 KiB early data limit
    dialer.write(payload)
    dialer.write_eof()
    opened = _offer_dial(pair, dialer)
    assert len(_drain(opened.host)) == 16 * 1024  # the early part, before any round trip
    opened.settle()
    assert dialer.readable_bytes == 0
    opened.host.write_eof()
    opened.settle()
    assert opened.host.remote_fin and opened.host.state is State.CLOSED


def test_a_deferred_open_with_nothing_written_opens_bare_and_a_reset_sends_nothing() -> None:
    pair = MovingPair()
    bare = _offer_dial(pair, _deferred(pair, stream=1))
    assert bare.host.state is State.OPEN and bare.host.readable_bytes == 0
    assert "streams_with_early_data" not in pair.sessions.counters
    never = _deferred(pair, stream=2)
    never.reset(ErrorCode.CANCELLED, "abandoned before the open left")
    assert never.state is State.CLOSED and never.poll_transmit() == []


def test_a_refused_open_gives_back_every_byte_written_for_a_new_dial() -> None:
    pair = MovingPair()
    dialer = _deferred(pair)
    dialer.write(b"early")
    dialer.poll_transmit()  # the OPEN left with b"early"
    dialer.write(b" and queued")
    dialer.write_eof()
    refusal = encode_error(ErrorCode.RESUME_REFUSED, "no such session here")
    dialer.handle_frame(Frame(FrameType.RESET, 0, dialer.id, refusal), _now())
    assert dialer.state is State.CLOSED
    assert dialer.unopened() == (b"early and queued", True)


def _host_link(pair: MovingPair, clock: FakeClock) -> EndpointLink:
    """A host's endpoint machine, bound to SERVICE, whose accepts go through `pair`'s table."""
    link = EndpointLink(name="web", now=clock.now())
    hello = encode_control({"v": 1, "role": "router", "name": "r1"})
    link.handle_frames([Frame(FrameType.HELLO, 0, 0, hello)], clock.now())

    def accept(circuit_id: int, connect: Frame) -> Circuit:
        bind = HostHandshake(SERVICE, _ticket(WEB, Action.BIND, SERVICE), _credentials(WEB))
        return pair.sessions.accept(circuit_id, connect, bind, MIN_WINDOW, clock.now())

    link.bind(1, SERVICE, "ticket", accept, clock.now())
    bound = encode_control({"expires_at": 2**31})
    link.handle_frames([Frame(FrameType.BIND_OK, 0, 1, bound)], clock.now())
    link.poll_transmit()
    return link


def _connect_with_open(pair: MovingPair) -> Frame:
    dialer = _deferred(pair)
    dialer.write(b"ping")
    return _connect_for(dialer, 2)


def _types(link: EndpointLink) -> list[str]:
    return [FrameType(f.type).name for f in _decode(link.poll_transmit())]


def test_the_host_s_accept_of_an_open_leaves_with_its_first_answer() -> None:
    clock = FakeClock()
    pair = MovingPair()
    link = _host_link(pair, clock)
    link.handle_frames([_connect_with_open(pair)], clock.now())
    assert _types(link) == []  # held: the answer to the early data goes with it
    (incoming,) = [e for e in iter(link.poll_event, None) if isinstance(e, Incoming)]
    host = incoming.circuit
    assert _drain(host) == b"ping"
    link.flush(host)  # reading the early data returns no credit: still held
    assert _types(link) == []
    host.write(b"pong")
    link.flush(host)
    assert _types(link) == ["ACCEPT", "DATA"]  # one record, one router read


def test_a_host_that_does_not_answer_sends_its_accept_at_the_cork_deadline() -> None:
    clock = FakeClock()
    pair = MovingPair()
    link = _host_link(pair, clock)
    link.handle_frames([_connect_with_open(pair)], clock.now())
    assert _types(link) == []
    deadline = link.poll_timeout()
    assert deadline is not None and deadline.at <= clock.mono + link.cork_delay
    clock.advance(link.cork_delay)
    link.handle_timeout(clock.now())
    assert _types(link) == ["ACCEPT"]


def test_the_host_s_answer_releases_the_cork_and_its_deadline() -> None:
    # Else the host's timer wakes a cork delay after every in-session stream, for nothing.
    clock = FakeClock()
    pair = MovingPair()
    link = _host_link(pair, clock)
    link.handle_frames([_connect_with_open(pair)], clock.now())
    held = link.poll_timeout()
    assert held is not None and held.at <= clock.mono + link.cork_delay
    (incoming,) = [e for e in iter(link.poll_event, None) if isinstance(e, Incoming)]
    incoming.circuit.write(b"pong")
    link.flush(incoming.circuit)
    assert _types(link) == ["ACCEPT", "DATA"]
    assert link.timeout_may_be_later
    after = link.poll_timeout()
    assert after is not None and after.at > held.at and after.reason != "circuits"
    assert not link.timeout_may_be_later


def test_the_first_write_of_a_deferred_open_releases_its_cork_deadline() -> None:
    clock = FakeClock()
    pair = MovingPair()
    link = EndpointLink(name="alice", now=clock.now())
    hello = encode_control({"v": 1, "role": "router", "name": "r1"})
    link.handle_frames([Frame(FrameType.HELLO, 0, 0, hello)], clock.now())
    link.poll_transmit()
    secret, peer = pair.dialer.resume_secret, pair.dialer.peer
    assert secret is not None and peer is not None
    make = functools.partial(
        Circuit.open_in_session,
        service=SERVICE,
        secret=secret,
        peer=peer,
        stream=1,
        ticket=_ticket(ALICE, Action.DIAL, SERVICE),
        nonce=pair.sessions.nonce(),
        deferred=True,
    )
    dialer = link.dial(make, clock.now(), timeout=10.0)
    held = link.poll_timeout()
    assert held is not None and held.at <= clock.mono + link.cork_delay
    dialer.write(b"ping")
    assert [FrameType(f.type).name for f in _decode(link.flush_transmit(dialer))] == ["DIAL"]
    after = link.poll_timeout()
    # What is left is the link's keepalive (the dial's own deadline is later), not the cork.
    assert after is not None and after.at > held.at and after.reason == "keepalive"


def test_an_open_without_early_data_is_accepted_at_once() -> None:
    # The dialer needs the ACCEPT's credit to send anything: holding it would stall the
    # stream until the cork deadline.
    clock = FakeClock()
    pair = MovingPair()
    link = _host_link(pair, clock)
    connect = _connect_for(_deferred(pair), 2)  # nothing written: a bare OPEN
    link.handle_frames([connect], clock.now())
    assert _types(link) == ["ACCEPT"]
