"""The link machine on its own, in virtual time: HELLO and roles, keepalive, silence, GOAWAY."""

from __future__ import annotations

import pytest

from umbranet.proto.link import (
    Closing,
    LinkSession,
    LinkState,
    LinkTimers,
    PeerSilent,
    Ready,
    Role,
)
from umbranet.testing.clock import FakeClock
from umbranet.wire import ErrorCode, Frame, FrameDecoder, FrameType, WireError, encode_control
from umbranet.wire.control import decode_error


def _frames(session: LinkSession) -> list[Frame]:
    data = b"".join(session.poll_transmit())
    return [Frame(f.type, f.flags, f.circuit, bytes(f.payload)) for f in FrameDecoder().feed(data)]


def _pair(clock: FakeClock, timers: LinkTimers | None = None) -> tuple[LinkSession, LinkSession]:
    """An endpoint (opener) and a router (acceptor), HELLO exchanged."""
    endpoint = LinkSession(
        Role.ENDPOINT, opener=True, name="alice", peer_kind="router", now=clock.now(), timers=timers
    )
    router = LinkSession(
        Role.ROUTER, opener=False, name="r1", peer_kind="device", now=clock.now(), timers=timers
    )
    _deliver(endpoint, router, clock)
    _deliver(router, endpoint, clock)
    return endpoint, router


def _deliver(source: LinkSession, target: LinkSession, clock: FakeClock) -> None:
    frames = _frames(source)
    if frames:
        target.heard(clock.now())
    for frame in frames:
        target.handle_link_frame(frame, clock.now())


def test_hello_makes_both_sides_ready_and_names_the_peer() -> None:
    endpoint, router = _pair(FakeClock())
    assert endpoint.ready and router.ready
    assert endpoint.poll_event() == Ready(Role.ROUTER, "r1")
    assert router.poll_event() == Ready(Role.ENDPOINT, "alice")


@pytest.mark.parametrize(
    ("role", "kind", "code"),
    [
        ("router", "device", ErrorCode.NOT_AUTHORIZED),  # a device claiming to relay
        ("endpoint", "router", ErrorCode.NOT_AUTHORIZED),  # a router dialing as an endpoint
        ("king", "device", ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_a_role_that_does_not_match_the_certificate_is_refused(
    role: str, kind: str, code: ErrorCode
) -> None:
    clock = FakeClock()
    router = LinkSession(Role.ROUTER, opener=False, name="r1", peer_kind=kind, now=clock.now())
    hello = Frame(FrameType.HELLO, 0, 0, encode_control({"v": 1, "role": role}))
    with pytest.raises(WireError) as info:
        router.handle_link_frame(hello, clock.now())
    assert info.value.code is code
    assert not router.ready


def test_router_to_router_links_are_recognised() -> None:
    clock = FakeClock()
    dialing = LinkSession(Role.ROUTER, opener=True, name="r1", peer_kind="router", now=clock.now())
    accepting = LinkSession(
        Role.ROUTER, opener=False, name="r2", peer_kind="router", now=clock.now()
    )
    _deliver(dialing, accepting, clock)
    _deliver(accepting, dialing, clock)
    assert accepting.peer_role is Role.ROUTER and dialing.peer_role is Role.ROUTER
    # Both may open circuits without colliding: the opener's ids are odd, the acceptor's even.
    assert dialing.next_id(()) % 2 == 1 and accepting.next_id(()) % 2 == 0
    assert accepting.is_peer_id(1) and not accepting.is_peer_id(2)


def test_no_hello_in_time_closes_with_goaway() -> None:
    clock = FakeClock()
    router = LinkSession(Role.ROUTER, opener=False, name="r1", peer_kind="device", now=clock.now())
    deadline = router.poll_timeout()
    assert deadline is not None and deadline.reason == "hello"
    clock.advance(deadline.at - clock.mono)
    router.handle_timeout(clock.now())
    assert router.state is LinkState.CLOSED
    (goaway,) = _frames(router)
    assert goaway.type == FrameType.GOAWAY
    assert decode_error(goaway.payload) == (ErrorCode.PROTOCOL_ERROR, "no HELLO in time")


def test_keepalive_pings_measure_rtt_while_the_peer_answers() -> None:
    clock = FakeClock()
    endpoint, router = _pair(clock, LinkTimers(ping_interval=5, silent_after=15))
    for _ in range(10):  # a minute of idle link: pings go out, pongs come back
        deadline = endpoint.poll_timeout()
        assert deadline is not None and deadline.reason == "keepalive"
        clock.advance(deadline.at - clock.mono)
        endpoint.handle_timeout(clock.now())
        _deliver(endpoint, router, clock)  # PING
        clock.advance(0.02)
        _deliver(router, endpoint, clock)  # PONG, 20 ms later
    assert endpoint.ready and endpoint.pings_sent == 10 and endpoint.pongs_received == 10
    assert endpoint.rtt == pytest.approx(0.02)


def test_a_silent_peer_is_detected_within_the_deadline() -> None:
    clock = FakeClock()
    endpoint, _ = _pair(clock, LinkTimers(ping_interval=5, silent_after=15))
    events: list[object] = []
    while endpoint.state is not LinkState.CLOSED:  # the router never answers again
        deadline = endpoint.poll_timeout()
        assert deadline is not None
        clock.advance(deadline.at - clock.mono)
        endpoint.handle_timeout(clock.now())
        while (event := endpoint.poll_event()) is not None:
            events.append(event)
    assert clock.mono - 1000.0 == pytest.approx(15.0)
    silent = [e for e in events if isinstance(e, PeerSilent)]
    assert len(silent) == 1 and silent[0].silent_for == pytest.approx(15.0)
    assert endpoint.pings_sent == 2  # at 5 s and 10 s, unanswered


def test_goaway_from_the_peer_ends_the_link_with_its_reason() -> None:
    clock = FakeClock()
    endpoint, router = _pair(clock)
    endpoint.poll_event()
    router.close(ErrorCode.SHUTTING_DOWN, "router stopping")
    _deliver(router, endpoint, clock)
    assert endpoint.poll_event() == Closing(ErrorCode.SHUTTING_DOWN, "router stopping", True)
    assert endpoint.poll_timeout() is None


@pytest.mark.parametrize(
    "frame",
    [
        Frame(FrameType.PING, 0, 0, b"x" * 65),
        Frame(FrameType.HELLO, 0, 0, encode_control({"v": 1, "role": "router"})),
        Frame(FrameType.DATA, 0, 0, b""),
    ],
)
def test_link_frames_a_ready_peer_may_not_send(frame: Frame) -> None:
    clock = FakeClock()
    _, router = _pair(clock)
    with pytest.raises(WireError) as info:
        router.handle_link_frame(frame, clock.now())
    assert info.value.code is ErrorCode.PROTOCOL_ERROR
