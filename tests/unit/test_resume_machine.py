"""Moving an end-to-end session to a new circuit, sans-IO (proto/resume.py, retain.py,
sessions.py and the circuit's resume states): the bytes of both directions arrive exactly
once and in order across any number of path failures, and a router cannot resume, splice or
replay a session (issue 11, item 5)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.clock import Instant
from umbranet.pki import IdentityFile
from umbranet.pki.tickets import Action
from umbranet.proto.circuit import Circuit, Closed, State
from umbranet.proto.e2e import DialerHandshake, HostHandshake, LocalCredentials
from umbranet.proto.flow import MIN_WINDOW
from umbranet.proto.resume import RESUME_SIZE, Resume, ResumeSecret, is_resume_blob
from umbranet.proto.retain import Retained
from umbranet.proto.sessions import Sessions
from umbranet.testing import LocalNetwork
from umbranet.wire import ErrorCode, Frame, FrameDecoder, FrameType, decode_control, encode_control
from umbranet.wire.control import decode_error
from umbranet.wire.frames import encode_frame

SERVICE = "echo"
NET = LocalNetwork()
ALICE = NET.identity("alice")
WEB = NET.identity("web")
MALLORY = NET.identity("mallory")


def _now() -> datetime:
    return datetime.now(UTC)


def _instant() -> Instant:
    return Instant(0.0, _now())


def _credentials(identity: IdentityFile) -> LocalCredentials:
    return LocalCredentials(identity.cert_pem, identity.noise_private_key, identity.bundle)


def _ticket(identity: IdentityFile, action: Action, service: str = SERVICE) -> str:
    return NET.signer.sign_ticket(identity.spiffe_id, service, action, _now())[1]


def _decode(buffers: list[bytes]) -> list[Frame]:
    if not buffers:
        return []
    frames = FrameDecoder().feed(b"".join(buffers))
    return [Frame(f.type, f.flags, f.circuit, bytes(f.payload)) for f in frames]


class MovingPair:
    """A dialer and a host whose circuit can fail (frames in flight are lost) and move.

    The host takes every CONNECT through its `Sessions`, as the shells do; `connects` keeps
    each CONNECT the host was given, so a test can replay one as a router would."""

    def __init__(self, window: int = MIN_WINDOW) -> None:
        self.sessions = Sessions(entropy=random.Random(1).randbytes)
        self.window = window
        self.next_id = 1
        self.connects: list[Frame] = []
        handshake = DialerHandshake(SERVICE, _ticket(ALICE, Action.DIAL), _credentials(ALICE))
        self.dialer = Circuit.dial(self._id(), SERVICE, handshake, window)
        self.to_host: list[Frame] = []
        self.to_dialer: list[Frame] = []
        self.host = self._connect(self._take(self.dialer)[0])
        self.settle()
        assert self.dialer.state is State.OPEN and self.host.state is State.OPEN
        self.sessions.opened(self.host)

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _take(self, circuit: Circuit) -> list[Frame]:
        return _decode(circuit.poll_transmit())

    def _connect(self, dial: Frame, ticket: str | None = None) -> Circuit:
        ctl = decode_control(dial.payload)
        fields = {
            "service": SERVICE,
            "binding": 1,
            "ticket": ticket or ctl.str_field("ticket"),
            "dialer": ALICE.spiffe_id,
            "window": ctl.int_field("window"),
        }
        (connect,) = _decode(
            [encode_frame(FrameType.CONNECT, self._id(), encode_control(fields, ctl.blob))]
        )
        self.connects.append(connect)
        return self.offer(connect)

    def offer(self, connect: Frame) -> Circuit:
        """The host gets `connect` (from some router); returns the circuit it made."""
        bind = HostHandshake(SERVICE, _ticket(WEB, Action.BIND), _credentials(WEB))
        return self.sessions.accept(connect.circuit, connect, bind, self.window, _instant())

    def pump(self) -> int:
        """Move queued frames into flight, then deliver what is in flight."""
        self.to_host += self._take(self.dialer)
        self.to_dialer += self._take(self.host)
        moved = len(self.to_host) + len(self.to_dialer)
        frames, self.to_host = self.to_host, []
        for frame in frames:
            self.host.handle_frame(
                Frame(frame.type, frame.flags, self.host.id, frame.payload), _now()
            )
        frames, self.to_dialer = self.to_dialer, []
        for frame in frames:
            self.dialer.handle_frame(
                Frame(frame.type, frame.flags, self.dialer.id, frame.payload), _now()
            )
        return moved

    def settle(self) -> None:
        for _ in range(10_000):
            if not self.pump():
                return
        raise AssertionError("never settled")

    def fail_path(self, host_knows: bool = True) -> None:
        """A router on the path died: what was in flight is lost, both ends detach (the host
        may not have noticed yet when the resume arrives)."""
        self.to_host += self._take(self.dialer)
        self.to_dialer += self._take(self.host)
        self.to_host.clear()
        self.to_dialer.clear()
        self.dialer.detach(ErrorCode.PEER_GONE, "hop lost")
        if host_knows:
            self.host.detach(ErrorCode.PEER_GONE, "hop lost")

    def resume(self) -> Circuit:
        nonce = self.sessions.nonce()
        self.dialer.resume_dial(self._id(), _ticket(ALICE, Action.DIAL), nonce)
        (dial,) = self._take(self.dialer)
        assert is_resume_blob(decode_control(dial.payload).blob)
        circuit = self._connect(dial)
        self.settle()
        return circuit


def _drain(circuit: Circuit) -> bytes:
    out = bytearray()
    while chunk := circuit.take(1 << 20):
        out += chunk
    return bytes(out)


def _events(circuit: Circuit) -> list[object]:
    events = []
    while (event := circuit.poll_event()) is not None:
        events.append(event)
    return events


def _reset_code(frames: list[Frame]) -> ErrorCode:
    (reset,) = [f for f in frames if f.type == FrameType.RESET]
    return decode_error(reset.payload)[0]


def test_a_session_moves_and_both_directions_arrive_once_in_order() -> None:
    pair = MovingPair()
    up, down = random.Random(2).randbytes(300_000), random.Random(3).randbytes(200_000)
    got_up, got_down = bytearray(), bytearray()
    pair.dialer.write(up[:150_000])
    pair.host.write(down[:90_000])
    pair.pump()
    got_up += _drain(pair.host)
    got_down += _drain(pair.dialer)
    pair.pump()
    pair.fail_path()
    assert pair.dialer.state is State.DETACHED and pair.host.state is State.DETACHED
    pair.dialer.write(up[150_000:])  # the application keeps writing during the pause
    pair.dialer.write_eof()
    pair.host.write(down[90_000:])
    pair.host.write_eof()
    moved = pair.resume()
    assert moved is pair.host and pair.host.state is State.OPEN
    for _ in range(100):
        got_up += _drain(pair.host)
        got_down += _drain(pair.dialer)
        if not pair.pump() and pair.host.state is State.CLOSED:
            break
    got_up += _drain(pair.host)
    got_down += _drain(pair.dialer)
    assert bytes(got_up) == up and bytes(got_down) == down
    for end in (pair.dialer, pair.host):
        assert end.state is State.CLOSED and end.error is not None and end.error.clean
        assert end.resumes == 1
        assert end.retained_bytes == 0  # a finished stream keeps nothing to resend
    assert pair.sessions.counters["resumes_accepted"] == 1
    pair.sessions.handle_timeout(_instant())
    assert pair.sessions.statistics()["sessions"] == 0  # nor does the table keep it


def test_a_closed_stream_leaves_the_table_when_told_and_cannot_be_resumed() -> None:
    pair = MovingPair()
    other = MovingPair()  # a live session the table keeps
    pair.sessions.opened(other.host)
    pair.sessions.closed(other.host)  # still open: told in error, nothing goes
    pair.dialer.write_eof()
    pair.host.write_eof()
    pair.settle()
    assert pair.host.state is State.CLOSED
    assert pair.sessions.statistics()["sessions"] == 2
    pair.sessions.closed(pair.host)
    assert pair.sessions.statistics()["sessions"] == 1  # no sweep needed
    # A RESUME naming it finds nothing (as one naming a closed circuit the table kept did).
    assert pair.dialer.resume_secret is not None
    resume = Resume.build(pair.dialer.resume_secret, 1, bytes(16), 0, False)
    fields = {"service": SERVICE, "binding": 1, "ticket": _ticket(ALICE, Action.DIAL),
              "dialer": ALICE.spiffe_id, "window": MIN_WINDOW}  # fmt: skip
    (connect,) = _decode([encode_frame(FrameType.CONNECT, 99, encode_control(fields, resume.raw))])
    refused = pair.offer(connect)
    assert refused.state is State.CLOSED
    assert pair.sessions.counters["resume_refused"] == 1


def test_a_resume_while_the_host_still_holds_the_old_circuit_moves_it() -> None:
    pair = MovingPair()
    pair.dialer.write(b"x" * 100_000)
    pair.pump()
    pair.fail_path(host_knows=False)
    assert pair.host.state is State.OPEN
    pair.resume()
    assert pair.host.state is State.OPEN and pair.host.resumes == 1
    pair.settle()
    assert len(_drain(pair.host)) == 100_000


def test_the_retransmit_buffer_never_holds_more_than_the_peer_window() -> None:
    pair = MovingPair(window=MIN_WINDOW)
    pair.dialer.write(b"y" * (10 * MIN_WINDOW))
    for _ in range(50):
        pair.pump()
        assert pair.dialer.retained_bytes <= MIN_WINDOW
        _drain(pair.host)
    assert pair.dialer.unsent_bytes == 0


def test_a_router_replaying_a_resume_is_refused_and_counted_and_the_session_keeps_going() -> None:
    pair = MovingPair()
    pair.fail_path()
    pair.resume()
    replayed = pair.connects[-1]
    circuit = pair.offer(Frame(replayed.type, replayed.flags, 99, replayed.payload))
    assert circuit is not pair.host and circuit.state is State.CLOSED
    assert _reset_code(_decode(circuit.poll_transmit())) is ErrorCode.REPLAYED
    assert pair.sessions.counters["replayed"] == 1
    assert pair.host.state is State.OPEN and pair.host.id != 99
    pair.dialer.write(b"still here")
    pair.settle()
    assert _drain(pair.host) == b"still here"


def test_a_forged_resume_is_refused_before_anything_moves() -> None:
    pair = MovingPair()
    pair.fail_path()
    pair.dialer.resume_dial(50, _ticket(ALICE, Action.DIAL), b"n" * 16)
    (dial,) = _decode(pair.dialer.poll_transmit())
    ctl = decode_control(dial.payload)
    forged = bytearray(ctl.blob)
    forged[30] ^= 1  # the generation, say: the mac no longer holds
    fields = {
        "service": SERVICE,
        "binding": 1,
        "ticket": ctl.str_field("ticket"),
        "dialer": ALICE.spiffe_id,
        "window": MIN_WINDOW,
    }
    connect = Frame(FrameType.CONNECT, 0, 60, encode_control(fields, bytes(forged)))
    circuit = pair.offer(connect)
    assert _reset_code(_decode(circuit.poll_transmit())) is ErrorCode.RESUME_REFUSED
    assert pair.sessions.counters["resume_refused"] == 1
    assert pair.host.state is State.DETACHED  # untouched: the real resume may still come


def test_a_resume_of_an_unknown_session_is_refused() -> None:
    pair = MovingPair()
    other = MovingPair()
    other.fail_path()
    other.dialer.resume_dial(70, _ticket(ALICE, Action.DIAL), b"m" * 16)
    (dial,) = _decode(other.dialer.poll_transmit())
    ctl = decode_control(dial.payload)
    fields = {
        "service": SERVICE,
        "binding": 1,
        "ticket": ctl.str_field("ticket"),
        "dialer": ALICE.spiffe_id,
        "window": MIN_WINDOW,
    }
    circuit = pair.offer(Frame(FrameType.CONNECT, 0, 71, encode_control(fields, ctl.blob)))
    assert _reset_code(_decode(circuit.poll_transmit())) is ErrorCode.RESUME_REFUSED
    assert pair.sessions.counters["resume_refused"] == 1


def test_a_resume_needs_the_same_identity_s_ticket_for_the_service() -> None:
    pair = MovingPair()
    pair.fail_path()
    pair.dialer.resume_dial(80, _ticket(ALICE, Action.DIAL), b"k" * 16)
    (dial,) = _decode(pair.dialer.poll_transmit())
    circuit = pair._connect(dial, ticket=_ticket(MALLORY, Action.DIAL))
    assert _reset_code(_decode(circuit.poll_transmit())) is ErrorCode.PEER_IDENTITY_MISMATCH
    assert pair.host.state is State.DETACHED


def test_a_resume_through_another_service_s_binding_is_refused() -> None:
    pair = MovingPair()
    pair.fail_path()
    pair.dialer.resume_dial(85, _ticket(ALICE, Action.DIAL), b"s" * 16)
    (dial,) = _decode(pair.dialer.poll_transmit())
    ctl = decode_control(dial.payload)
    fields = {
        "service": "admin",
        "binding": 2,
        "ticket": _ticket(ALICE, Action.DIAL, "admin"),  # a grant to another service
        "dialer": ALICE.spiffe_id,
        "window": MIN_WINDOW,
    }
    connect = Frame(FrameType.CONNECT, 0, 86, encode_control(fields, ctl.blob))
    bind = HostHandshake("admin", _ticket(WEB, Action.BIND, "admin"), _credentials(WEB))
    circuit = pair.sessions.accept(86, connect, bind, MIN_WINDOW, _instant())
    assert _reset_code(_decode(circuit.poll_transmit())) is ErrorCode.RESUME_REFUSED
    assert pair.host.state is State.DETACHED


def test_a_forged_resume_ok_ends_the_dialer_s_stream_with_an_error() -> None:
    pair = MovingPair()
    pair.fail_path()
    pair.dialer.resume_dial(90, _ticket(ALICE, Action.DIAL), b"j" * 16)
    _decode(pair.dialer.poll_transmit())
    fake = encode_control({"window": MIN_WINDOW}, b"UMR\x01\x02" + bytes(57))
    pair.dialer.handle_frame(Frame(FrameType.ACCEPT, 0, 90, fake), _now())
    closed = [e for e in _events(pair.dialer) if isinstance(e, Closed)]
    assert closed and closed[0].code is ErrorCode.RESUME_REFUSED


def test_a_resume_blob_is_never_mistaken_for_a_noise_message() -> None:
    assert RESUME_SIZE != 32
    assert not is_resume_blob(bytes(32))


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["write_up", "write_down", "read", "pump", "fail", "fail_quiet"]),
            st.integers(1, 150_000),
        ),
        max_size=25,
    )
)
def test_any_interleaving_of_writes_reads_and_path_failures_loses_and_repeats_nothing(
    steps: list[tuple[str, int]],
) -> None:
    pair = MovingPair()
    rng = random.Random(len(steps))
    up, down = bytearray(), bytearray()
    got_up, got_down = bytearray(), bytearray()
    for action, size in steps:
        if action == "write_up":
            chunk = rng.randbytes(size)
            up += chunk
            pair.dialer.write(chunk)
        elif action == "write_down":
            chunk = rng.randbytes(size)
            down += chunk
            pair.host.write(chunk)
        elif action == "read":
            got_up += pair.host.take(size)
            got_down += pair.dialer.take(size)
            pair.pump()
        elif action == "pump":
            pair.pump()
        else:
            pair.fail_path(host_knows=action == "fail")
            pair.resume()
    pair.dialer.write_eof()
    pair.host.write_eof()
    for _ in range(1000):
        got_up += _drain(pair.host)
        got_down += _drain(pair.dialer)
        if not pair.pump() and pair.dialer.state is State.CLOSED:
            break
    assert bytes(got_up) == bytes(up)
    assert bytes(got_down) == bytes(down)
    assert pair.dialer.error is not None and pair.dialer.error.clean


def test_retained_refuses_an_offset_it_cannot_serve() -> None:
    kept = Retained()
    kept.sent_frame(116, b"a" * 100)
    kept.sent_frame(116, b"b" * 100)
    kept.credited(116)  # the first frame is acknowledged and freed
    assert kept.base == 100 and kept.size == 100
    assert kept.rewind(50) is None  # the peer claims less than was acknowledged: a gap
    assert kept.rewind(201) is None  # more than was ever sent
    assert kept.rewind(150) == [b"b" * 50]


@pytest.mark.parametrize("deadline", [0.0])
def test_with_moving_off_a_failed_path_ends_the_stream_as_the_failure_said(deadline: float) -> None:
    pair = MovingPair()
    pair.sessions.deadline = deadline
    pair.fail_path()
    pair.sessions.detached(pair.dialer, _instant())
    assert pair.dialer.state is State.CLOSED
    assert pair.dialer.error is not None and pair.dialer.error.code is ErrorCode.PEER_GONE
    assert not pair.dialer.error.authenticated


def test_a_session_secret_never_shows_in_its_repr() -> None:
    secret = ResumeSecret(bytes(range(32)))
    text = repr(secret)
    assert repr(secret.secret) not in text and secret.secret.hex() not in text
    assert repr(secret.mac_key) not in text
