"""A session moving at the host's endpoint machine (proto/endpoint.py), not only at the
circuit: the path failure and the dialer's RESUME may reach the host in any order and in
one read, and the host must still take the dialer's CONFIRM and the data after it."""

from __future__ import annotations

import pytest

from tests.unit.test_resume_machine import (
    ALICE,
    SERVICE,
    MovingPair,
    _credentials,
    _decode,
    _drain,
    _now,
    _ticket,
)
from tests.unit.test_session_streams import _connect_for, _host_link
from umbranet.pki.tickets import Action
from umbranet.proto.circuit import Circuit, State
from umbranet.proto.e2e import DialerHandshake
from umbranet.proto.endpoint import EndpointLink, Incoming, SessionDetached, SessionResumed
from umbranet.proto.flow import MIN_WINDOW
from umbranet.testing.clock import FakeClock
from umbranet.wire import ErrorCode, Frame, FrameType
from umbranet.wire.control import encode_error

HOST_SIDE = (2, 4)  # the ids the host's router gives the first and the resumed circuit


def _pump(dialer: Circuit, link: EndpointLink, host_id: int, clock: FakeClock) -> None:
    """Carry frames both ways between the dialer's circuit and the host's link (one
    router between them: ids rewritten, nothing lost) until neither side has more."""
    for _ in range(100):
        to_host = _decode(dialer.poll_transmit())
        to_dialer = _decode(link.poll_transmit())
        for frame in to_dialer:
            dialer.handle_frame(Frame(frame.type, frame.flags, dialer.id, frame.payload), _now())
        if to_host:
            link.handle_frames(
                [Frame(f.type, f.flags, host_id, f.payload) for f in to_host], clock.now()
            )
        if not to_host and not to_dialer:
            return
    raise AssertionError("never settled")


def _events(link: EndpointLink) -> list[object]:
    return list(iter(link.poll_event, None))


@pytest.mark.parametrize("one_read", [True, False], ids=["one read", "two reads"])
def test_a_resume_in_the_read_that_ends_the_old_path_moves_the_session(one_read: bool) -> None:
    clock = FakeClock()
    pair = MovingPair()  # only its Sessions table: the host's accepts go through it
    link = _host_link(pair, clock)
    old, new = HOST_SIDE
    handshake = DialerHandshake(SERVICE, _ticket(ALICE, Action.DIAL), _credentials(ALICE))
    dialer = Circuit.dial(1, SERVICE, handshake, MIN_WINDOW)
    link.handle_frames([_connect_for(dialer, old)], clock.now())
    _pump(dialer, link, old, clock)
    (incoming,) = [e for e in _events(link) if isinstance(e, Incoming)]
    host = incoming.circuit
    pair.sessions.opened(host)  # as the host's shell does for every stream it accepts
    assert dialer.state is State.OPEN and host.state is State.OPEN

    # A router on the path dies: the dialer's router tells it first, and the dialer's
    # RESUME reaches the host right behind the host's own router's RESET.
    dialer.detach(ErrorCode.PEER_GONE, "hop lost")
    dialer.resume_dial(3, _ticket(ALICE, Action.DIAL), pair.sessions.nonce())
    gone = Frame(FrameType.RESET, 0, old, encode_error(ErrorCode.PEER_GONE, "hop lost"))
    resume = _connect_for(dialer, new)
    if one_read:
        link.handle_frames([gone, resume], clock.now())
    else:
        link.handle_frames([gone], clock.now())
        link.handle_frames([resume], clock.now())
    dialer.write(b"after the move")
    _pump(dialer, link, new, clock)

    events = _events(link)
    assert any(isinstance(e, SessionDetached) for e in events)
    assert any(isinstance(e, SessionResumed) for e in events)
    assert dialer.state is State.OPEN and host.state is State.OPEN and host.resumes == 1
    assert _drain(host) == b"after the move"
    assert "frames_unknown_circuit" not in link.counters  # the CONFIRM found its circuit
