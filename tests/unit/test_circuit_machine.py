"""The circuit machine with no sockets: a dialer and a host `Circuit` joined by a tiny router.

The in-memory router does what the real one does to circuit frames: it rewrites circuit ids
and counts DATA against the receiver's window and CREDIT against what was sent (the same
`RelayAccount`), so a machine that over-credits fails here as it would in production. Tests
can also edit frames in flight: tamper, replay, drop, flip FIN.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.pki import IdentityFile
from umbranet.pki.tickets import Action
from umbranet.proto.circuit import Circuit, Closed, Opened, State
from umbranet.proto.e2e import DialerHandshake, HostHandshake, LocalCredentials
from umbranet.proto.flow import MIN_WINDOW, RelayAccount
from umbranet.testing import LocalNetwork
from umbranet.wire import (
    ErrorCode,
    Flag,
    Frame,
    FrameDecoder,
    FrameType,
    decode_control,
    encode_control,
)
from umbranet.wire.frames import encode_frame

SERVICE = "echo"
DIALER_ID, HOST_ID = 1, 2
NET = LocalNetwork()
ALICE = NET.identity("alice")
WEB = NET.identity("web")
BOB = NET.identity("bob")

Edit = Callable[[list[Frame]], list[Frame]]


def _now() -> datetime:
    return datetime.now(UTC)


def _credentials(identity: IdentityFile) -> LocalCredentials:
    return LocalCredentials(identity.cert_pem, identity.noise_private_key, identity.bundle)


def _ticket(identity: IdentityFile, action: Action, service: str = SERVICE) -> str:
    return NET.signer.sign_ticket(identity.spiffe_id, service, action, _now())[1]


def _decode(buffers: list[bytes]) -> list[Frame]:
    if not buffers:
        return []
    frames = FrameDecoder().feed(b"".join(buffers))
    return [Frame(f.type, f.flags, f.circuit, bytes(f.payload)) for f in frames]


class Pair:
    """A dialer and a host circuit with an in-memory router between them."""

    def __init__(
        self,
        dial_window: int = MIN_WINDOW,
        host_window: int = MIN_WINDOW,
        proof: LocalCredentials | None = None,
        proof_ticket: str | None = None,
    ) -> None:
        dial_ticket = _ticket(ALICE, Action.DIAL)
        handshake = DialerHandshake(SERVICE, dial_ticket, _credentials(ALICE))
        if proof is not None or proof_ticket is not None:
            # What the dialer proves in message 3 (the router checked `dial_ticket`).
            handshake = DialerHandshake(
                SERVICE, proof_ticket or dial_ticket, proof or _credentials(ALICE)
            )
        self.dialer = Circuit.dial(DIALER_ID, SERVICE, handshake, window=dial_window)
        (dial,) = _decode(self.dialer.poll_transmit())
        assert dial.type == FrameType.DIAL
        self.to_host = RelayAccount(0)  # set by ACCEPT, as the router does
        self.to_dialer = RelayAccount(dial_window)
        fields = {
            "service": SERVICE,
            "binding": 1,
            "ticket": dial_ticket,
            "dialer": ALICE.spiffe_id,
            "window": dial_window,
        }
        blob = decode_control(dial.payload).blob
        (connect,) = _decode(
            [encode_frame(FrameType.CONNECT, HOST_ID, encode_control(fields, blob))]
        )
        host_handshake = HostHandshake(SERVICE, _ticket(WEB, Action.BIND), _credentials(WEB))
        self.host = Circuit.accept(HOST_ID, connect, host_handshake, window=host_window)
        self.violations: list[str] = []
        self.totals: Counter[str] = Counter()  # bytes of DATA and CREDIT, per direction

    def host_to_dialer(self, edit: Edit | None = None) -> int:
        """Relay what the host queued; returns how many frames went."""
        frames = _decode(self.host.poll_transmit())
        frames = edit(frames) if edit else frames
        for frame in frames:
            if frame.type == FrameType.ACCEPT:
                self.to_host = RelayAccount(decode_control(frame.payload).int_field("window"))
            self._account(frame, self.to_dialer, self.to_host, "to dialer")
            self.dialer.handle_frame(
                Frame(frame.type, frame.flags, DIALER_ID, frame.payload), _now()
            )
        return len(frames)

    def dialer_to_host(self, edit: Edit | None = None) -> int:
        frames = _decode(self.dialer.poll_transmit())
        frames = edit(frames) if edit else frames
        for frame in frames:
            self._account(frame, self.to_host, self.to_dialer, "to host")
            self.host.handle_frame(Frame(frame.type, frame.flags, HOST_ID, frame.payload), _now())
        return len(frames)

    def settle(self) -> None:
        """Relay both ways until nothing moves."""
        while self.dialer_to_host() + self.host_to_dialer():
            pass

    def _account(
        self, frame: Frame, forward: RelayAccount, back: RelayAccount, direction: str
    ) -> None:
        if frame.type == FrameType.DATA:
            self.totals[f"data {direction}"] += len(frame.payload)
            if not forward.forward(len(frame.payload)):
                self.violations.append("DATA beyond the window")
        if frame.type == FrameType.CREDIT:
            amount = struct.unpack("!I", frame.payload)[0]
            self.totals[f"credit {direction}"] += amount
            if not back.credit(amount):
                self.violations.append("CREDIT beyond what was sent")


def _events(circuit: Circuit) -> list[object]:
    events = []
    while (event := circuit.poll_event()) is not None:
        events.append(event)
    return events


def _closed(circuit: Circuit) -> Closed:
    closed = [e for e in _events(circuit) if isinstance(e, Closed)]
    assert len(closed) == 1
    return closed[0]


def _open_pair(**options: object) -> Pair:
    pair = Pair(**options)  # type: ignore[arg-type]
    pair.settle()
    assert pair.dialer.state is State.OPEN and pair.host.state is State.OPEN
    return pair


def _take_all(circuit: Circuit, step: int = 1 << 20) -> bytes:
    out = bytearray()
    while chunk := circuit.take(step):
        out += chunk
    return bytes(out)


# -- handshake ------------------------------------------------------------------------------


def test_handshake_opens_both_ends_and_proves_each_peer() -> None:
    pair = Pair()
    pair.settle()
    dialer_events, host_events = _events(pair.dialer), _events(pair.host)
    assert [type(e) for e in dialer_events] == [Opened]
    assert [type(e) for e in host_events] == [Opened]
    assert pair.dialer.peer is not None and pair.dialer.peer.spiffe_id == WEB.spiffe_id
    assert pair.host.peer is not None and pair.host.peer.spiffe_id == ALICE.spiffe_id


def test_garbage_handshake_message_1_resets_with_handshake_failed() -> None:
    fields = {"service": SERVICE, "binding": 1, "ticket": "x", "dialer": ALICE.spiffe_id}
    fields["window"] = MIN_WINDOW
    connect = _decode([encode_frame(FrameType.CONNECT, HOST_ID, encode_control(fields, b"junk"))])
    handshake = HostHandshake(SERVICE, _ticket(WEB, Action.BIND), _credentials(WEB))
    host = Circuit.accept(HOST_ID, connect[0], handshake)
    assert host.state is State.CLOSED
    assert _closed(host).code is ErrorCode.HANDSHAKE_FAILED
    assert [f.type for f in _decode(host.poll_transmit())] == [FrameType.RESET]


@pytest.mark.parametrize(
    ("proof", "proof_ticket", "code"),
    [
        # another identity's certificate, our noise key: the key is not the one it binds
        (LocalCredentials(BOB.cert_pem, ALICE.noise_private_key, NET.bundle), None, "mismatch"),
        # a whole other identity (its own key and ticket) than the router announced
        (_credentials(BOB), (BOB, Action.DIAL, SERVICE), "mismatch"),
        # our own credentials but another identity's ticket
        (None, (BOB, Action.DIAL, SERVICE), "mismatch"),
        # a bind ticket where a dial ticket belongs
        (None, (ALICE, Action.BIND, SERVICE), "not_authorized"),
        # a ticket for another service
        (None, (ALICE, Action.DIAL, "billing"), "not_authorized"),
    ],
)
def test_host_rejects_a_dialer_whose_proof_does_not_hold(
    proof: LocalCredentials | None,
    proof_ticket: tuple[IdentityFile, Action, str] | None,
    code: str,
) -> None:
    # Signed when the test runs, not when it is collected: a suite can take longer than a
    # ticket lives, and an expired ticket is refused for that reason instead.
    ticket = None if proof_ticket is None else _ticket(*proof_ticket)
    pair = Pair(proof=proof, proof_ticket=ticket)
    pair.settle()
    expected = {
        "mismatch": ErrorCode.PEER_IDENTITY_MISMATCH,
        "not_authorized": ErrorCode.PEER_NOT_AUTHORIZED,
    }[code]
    assert pair.host.state is State.CLOSED and pair.dialer.state is State.CLOSED
    host_end = _closed(pair.host)
    assert host_end.code is expected and not host_end.by_peer
    dialer_end = [e for e in _events(pair.dialer) if isinstance(e, Closed)]
    assert dialer_end[0].code is expected and dialer_end[0].by_peer


def test_certificate_from_another_ca_is_not_authorized() -> None:
    stranger = LocalNetwork().identity("alice")
    proof = LocalCredentials(stranger.cert_pem, stranger.noise_private_key, NET.bundle)
    pair = Pair(proof=proof)
    pair.settle()
    assert _closed(pair.host).code is ErrorCode.PEER_NOT_AUTHORIZED


# -- data, half-close, credit ---------------------------------------------------------------


def test_data_both_ways_and_half_close_end_cleanly() -> None:
    pair = _open_pair()
    pair.dialer.write(b"hello ")
    pair.dialer.write(b"host")
    pair.dialer.write_eof()
    pair.settle()
    assert _take_all(pair.host) == b"hello host"
    assert pair.host.at_eof and pair.host.state is State.OPEN  # the host may still write
    pair.host.write(b"hi dialer")
    pair.host.write_eof()
    pair.settle()
    assert pair.dialer.take(100) == b"hi dialer"
    assert pair.dialer.at_eof
    assert pair.dialer.state is State.CLOSED and pair.host.state is State.CLOSED
    assert _closed(pair.dialer).code is ErrorCode.NO_ERROR
    assert _closed(pair.host).code is ErrorCode.NO_ERROR
    assert pair.violations == []


def test_sender_is_held_at_the_window_until_the_reader_takes() -> None:
    pair = _open_pair(host_window=MIN_WINDOW)
    payload = bytes(range(256)) * 4096  # 1 MiB
    pair.dialer.write(payload)
    pair.settle()
    # The host buffered at most its window; the rest waits at the dialer.
    assert 0 < pair.host.readable_bytes <= MIN_WINDOW
    assert pair.dialer.unsent_bytes >= len(payload) - MIN_WINDOW
    received = bytearray()
    while len(received) < len(payload):
        chunk = pair.host.take(10_000)
        assert chunk or pair.host.readable_bytes == 0
        received += chunk
        pair.settle()
        assert pair.to_host.in_flight <= MIN_WINDOW
    assert bytes(received) == payload
    assert pair.violations == []


def test_pushed_back_bytes_are_not_credited_twice() -> None:
    # A reader that over-reads (readuntil) pushes the rest back; taking it again must not
    # return credit again, or the router sees more credit than DATA and resets the circuit.
    pair = _open_pair(host_window=MIN_WINDOW)
    payload = b"a line of text\n" * 20_000
    pair.dialer.write(payload)
    pair.dialer.write_eof()
    received = bytearray()
    pair.settle()
    while not pair.host.at_eof:
        chunk = pair.host.take(8192)
        line_end = chunk.find(b"\n", 1000) + 1 or len(chunk)
        received += chunk[:line_end]
        pair.host.push_back(chunk[line_end:])
        pair.settle()
        # Over-credit would let the sender fill more than the window (plus what we hold).
        assert pair.host.readable_bytes <= MIN_WINDOW + 8192
    assert bytes(received) == payload
    assert pair.totals["credit to dialer"] <= pair.totals["data to host"]
    assert pair.violations == []
    assert pair.dialer.error is None or pair.dialer.error.code is ErrorCode.NO_ERROR


@settings(max_examples=40, deadline=None)
@given(
    writes=st.lists(st.integers(min_value=0, max_value=150_000), min_size=1, max_size=12),
    reads=st.lists(st.integers(min_value=1, max_value=100_000), min_size=1, max_size=12),
    window=st.sampled_from([MIN_WINDOW, 100_000, 1 << 20]),
)
def test_any_write_and_read_sizes_deliver_the_exact_bytes(
    writes: list[int], reads: list[int], window: int
) -> None:
    pair = _open_pair(host_window=window, dial_window=window)
    payload = bytes((i * 7 + i // 251) & 0xFF for i in range(sum(writes)))
    offset = 0
    received = bytearray()
    for index, size in enumerate(writes):
        pair.dialer.write(payload[offset : offset + size])
        offset += size
        pair.settle()
        received += pair.host.take(reads[index % len(reads)])
        pair.settle()
    pair.dialer.write_eof()
    turn = 0
    while not pair.host.at_eof:
        pair.settle()
        received += pair.host.take(reads[turn % len(reads)])
        turn += 1
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert pair.violations == []


# -- a router (or anyone on the path) that edits DATA frames ------------------------------------


def _data(frames: list[Frame]) -> list[int]:
    return [i for i, f in enumerate(frames) if f.type == FrameType.DATA]


def _tamper(frames: list[Frame]) -> list[Frame]:
    index = _data(frames)[0]
    payload = bytearray(frames[index].payload)
    payload[3] ^= 0x01
    frames[index] = Frame(
        FrameType.DATA, frames[index].flags, frames[index].circuit, bytes(payload)
    )
    return frames


def _replay(frames: list[Frame]) -> list[Frame]:
    index = _data(frames)[0]
    return [*frames[: index + 1], frames[index], *frames[index + 1 :]]


def _drop(frames: list[Frame]) -> list[Frame]:
    index = _data(frames)[0]
    return frames[:index] + frames[index + 1 :]


def _add_fin(frames: list[Frame]) -> list[Frame]:
    index = _data(frames)[0]
    frame = frames[index]
    frames[index] = Frame(FrameType.DATA, frame.flags | Flag.FIN, frame.circuit, frame.payload)
    return frames


def _strip_fin(frames: list[Frame]) -> list[Frame]:
    index = next(i for i in _data(frames) if frames[i].flags & Flag.FIN)
    frame = frames[index]
    frames[index] = Frame(FrameType.DATA, frame.flags & ~Flag.FIN, frame.circuit, frame.payload)
    return frames


@pytest.mark.parametrize("edit", [_tamper, _replay, _drop, _add_fin, _strip_fin])
def test_edited_data_resets_with_decrypt_failed(edit: Edit) -> None:
    pair = _open_pair(host_window=1 << 20)
    pair.dialer.write(b"a" * 100_000)  # two DATA frames
    pair.dialer.write_eof()
    pair.dialer_to_host(edit)
    assert pair.host.state is State.CLOSED
    closed = _closed(pair.host)
    assert closed.code is ErrorCode.DECRYPT_FAILED and not closed.by_peer
    pair.host_to_dialer()
    assert pair.dialer.error is not None
    assert pair.dialer.error.code is ErrorCode.DECRYPT_FAILED and pair.dialer.error.by_peer


def test_data_beyond_the_window_resets_with_flow_control_error() -> None:
    pair = _open_pair(host_window=MIN_WINDOW)
    pair.dialer.write(b"x" * 300_000)
    sent = _decode(pair.dialer.poll_transmit())
    extra = sent[_data(sent)[0]]
    for frame in sent:  # fills the window exactly as far as credit allowed
        pair.host.handle_frame(Frame(frame.type, frame.flags, HOST_ID, frame.payload), _now())
    assert pair.host.state is State.OPEN
    pair.host.handle_frame(Frame(FrameType.DATA, 0, HOST_ID, extra.payload), _now())
    assert _closed(pair.host).code is ErrorCode.FLOW_CONTROL_ERROR


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (Frame(FrameType.CREDIT, 0, DIALER_ID, b"\x00\x01"), ErrorCode.PROTOCOL_ERROR),
        (Frame(FrameType.CREDIT, 0, DIALER_ID, struct.pack("!I", 1 << 30)), None),
        (Frame(FrameType.ACCEPT, 0, DIALER_ID, encode_control({"window": MIN_WINDOW})), None),
        (Frame(FrameType.DIAL, 0, DIALER_ID, b""), ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_misplaced_frames_reset_with_a_code_and_never_raise(
    frame: Frame, code: ErrorCode | None
) -> None:
    pair = _open_pair()
    pair.dialer.handle_frame(frame, _now())
    closed = _closed(pair.dialer)
    expected = (
        code
        or {
            FrameType.CREDIT: ErrorCode.FLOW_CONTROL_ERROR,
            FrameType.ACCEPT: ErrorCode.PROTOCOL_ERROR,
        }[FrameType(frame.type)]
    )
    assert closed.code is expected
    # The sealed abort for the peer, then RESET for the routers.
    sent = _decode(pair.dialer.poll_transmit())
    assert [(f.type, f.flags) for f in sent] == [(FrameType.DATA, Flag.ABORT), (FrameType.RESET, 0)]


def test_data_before_the_handshake_finished_is_a_protocol_error() -> None:
    pair = Pair()
    pair.host_to_dialer()  # the dialer opens; the host still waits for message 3
    pair.host.handle_frame(Frame(FrameType.DATA, 0, HOST_ID, b"\x00" * 32), _now())
    assert _closed(pair.host).code is ErrorCode.PROTOCOL_ERROR


def test_peer_reset_is_reported_with_its_code_and_writes_then_fail() -> None:
    pair = _open_pair()
    pair.host.reset(ErrorCode.REFUSED, "not today")
    pair.host_to_dialer()
    closed = next(e for e in _events(pair.dialer) if isinstance(e, Closed))
    assert (closed.code, closed.reason, closed.by_peer) == (ErrorCode.REFUSED, "not today", True)
    assert pair.dialer.at_eof
    with pytest.raises(ConnectionError):
        pair.dialer.write(b"late")
    pair.dialer.handle_frame(Frame(FrameType.DATA, 0, DIALER_ID, b"late"), _now())  # ignored
    assert pair.dialer.poll_transmit() == []
