"""The endpoint machine on its own, in virtual time: dial and bind deadlines, late frames,
the host's cap on handshakes in progress."""

from __future__ import annotations

import pytest

from umbranet.proto.circuit import Circuit, State
from umbranet.proto.e2e import DialerHandshake, LocalCredentials
from umbranet.proto.endpoint import BindFailed, DialFailed, EndpointLink, LinkDown
from umbranet.proto.flow import MIN_WINDOW
from umbranet.testing import LocalNetwork
from umbranet.testing.clock import FakeClock
from umbranet.wire import ErrorCode, Frame, FrameDecoder, FrameType, encode_control
from umbranet.wire.control import decode_error, encode_error

NET = LocalNetwork()
ALICE = NET.identity("alice")


def _credentials() -> LocalCredentials:
    return LocalCredentials(ALICE.cert_pem, ALICE.noise_private_key, ALICE.bundle)


def _dial(circuit_id: int) -> Circuit:
    return Circuit.dial(circuit_id, "echo", DialerHandshake("echo", "ticket", _credentials()))


def _accept(circuit_id: int, connect: Frame) -> Circuit:
    # A host waiting for the dialer's handshake (the CONNECT here carries none).
    return Circuit(circuit_id, State.ACCEPTING, MIN_WINDOW)


def _ready(clock: FakeClock, **options: object) -> EndpointLink:
    link = EndpointLink(name="alice", now=clock.now(), **options)  # type: ignore[arg-type]
    hello = encode_control({"v": 1, "role": "router", "name": "r1"})
    link.handle_frames([Frame(FrameType.HELLO, 0, 0, hello)], clock.now())
    link.poll_transmit()
    assert link.ready
    return link


def _sent(link: EndpointLink) -> list[Frame]:
    data = b"".join(link.poll_transmit())
    return [Frame(f.type, f.flags, f.circuit, bytes(f.payload)) for f in FrameDecoder().feed(data)]


def _events(link: EndpointLink) -> list[object]:
    events = []
    while (event := link.poll_event()) is not None:
        events.append(event)
    return events


def _run_until_due(link: EndpointLink, clock: FakeClock, reason: str) -> None:
    deadline = link.poll_timeout()
    assert deadline is not None
    clock.advance(max(0.0, deadline.at - clock.mono))
    link.handle_timeout(clock.now())


@pytest.mark.parametrize("ftype", [FrameType.ACCEPT, FrameType.HANDSHAKE, FrameType.DATA])
def test_late_frames_for_an_ended_circuit_are_dropped(ftype: int) -> None:
    # E.g. a dial that timed out (RESET sent) crosses the host's ACCEPT at the router.
    clock = FakeClock()
    link = _ready(clock)
    late = Frame(ftype, 0, 3, encode_control({"window": MIN_WINDOW}))
    link.handle_frames([late], clock.now())
    assert link.ready
    assert link.counters == {"frames_unknown_circuit": 1}
    assert _events(link) == []
    # Data or a handshake may be waited on: its sender hears the circuit is gone here.
    answers = [(f.type, f.circuit, decode_error(f.payload)[0]) for f in _sent(link)]
    if ftype == FrameType.ACCEPT:
        assert answers == []
    else:
        assert answers == [(FrameType.RESET, 3, ErrorCode.PEER_GONE)]


def test_a_reset_for_a_circuit_we_do_not_hold_is_never_answered() -> None:
    clock = FakeClock()
    link = _ready(clock)
    reset = Frame(FrameType.RESET, 0, 3, encode_error(ErrorCode.PEER_GONE, "gone"))
    link.handle_frames([reset, reset], clock.now())
    assert _sent(link) == [] and link.counters == {"frames_unknown_circuit": 2}


def test_a_dial_nobody_answers_fails_at_its_deadline_and_is_reset() -> None:
    clock = FakeClock()
    link = _ready(clock)
    opened = clock.mono
    circuit = link.dial(_dial, clock.now(), timeout=3.0)
    assert [f.type for f in _sent(link)] == [FrameType.DIAL]
    _run_until_due(link, clock, "circuits")
    assert clock.mono - opened == pytest.approx(3.0)
    assert _events(link) == [
        DialFailed(circuit.id, "dial_timeout", "no answer from the service in time")
    ]
    (reset,) = _sent(link)
    assert reset.type == FrameType.RESET and decode_error(reset.payload)[0] is ErrorCode.CANCELLED
    assert link.circuits == 0


def test_a_bind_the_router_never_answers_fails_at_its_deadline() -> None:
    clock = FakeClock()
    link = _ready(clock, bind_timeout=2.0)
    link.bind(9, "echo", "ticket", _accept, clock.now())
    assert [f.type for f in _sent(link)] == [FrameType.BIND]
    _run_until_due(link, clock, "circuits")
    assert _events(link) == [BindFailed(9, "router_timeout", "the router did not answer BIND")]


def test_connects_beyond_the_pending_handshake_cap_are_refused() -> None:
    clock = FakeClock()
    link = _ready(clock, max_pending_accepts=2)
    link.bind(1, "echo", "ticket", _accept, clock.now())
    link.handle_frames(
        [Frame(FrameType.BIND_OK, 0, 1, encode_control({"expires_at": 2**31}))], clock.now()
    )
    _sent(link)
    _events(link)
    connects = [
        Frame(FrameType.CONNECT, 0, cid, encode_control({"binding": 1})) for cid in (2, 4, 6)
    ]
    link.handle_frames(connects, clock.now())
    resets = [f for f in _sent(link) if f.type == FrameType.RESET]
    assert [f.circuit for f in resets] == [6]
    assert decode_error(resets[0].payload)[0] is ErrorCode.TOO_MANY_CIRCUITS
    assert link.counters["too_many_pending"] == 1
    assert link.circuits == 2


def test_a_silent_router_takes_the_link_down() -> None:
    clock = FakeClock()
    link = _ready(clock)
    down: list[object] = []
    for _ in range(10):
        _run_until_due(link, clock, "keepalive")
        down += [e for e in _events(link) if isinstance(e, LinkDown)]
        if down:
            break
    assert down == [LinkDown("peer_silent", "router silent for 15.0s")]
