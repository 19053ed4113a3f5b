"""The router's switch without sockets: SwitchLinks whose outboxes the tests read.

The Switch is sans-IO (it only appends to each link's session outbox), so every admission
rule, relay rule, deadline, quota and error code can be driven frame by frame here, in
virtual time; `tests/integration/test_router_bad_input.py` checks the same promises through
real TLS links.
"""

from __future__ import annotations

import struct
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.pki import IdentityFile, Signer
from umbranet.pki.tickets import Action
from umbranet.proto.flow import MIN_WINDOW
from umbranet.router.links import SwitchLink
from umbranet.router.quotas import SwitchLimits
from umbranet.router.switch import Switch as RouterSwitch
from umbranet.testing import LocalNetwork
from umbranet.testing.clock import FakeClock
from umbranet.wire import (
    PROTOCOL_VERSION,
    ErrorCode,
    Flag,
    Frame,
    FrameDecoder,
    FrameType,
    decode_control,
    encode_control,
)
from umbranet.wire.control import decode_error

NET = LocalNetwork()
ALICE = NET.identity("alice")
WEB = NET.identity("web")
CLOCK = FakeClock()
NOW = CLOCK.wall
SERVICE = "echo"


class FakeLink:
    """Stands in for the asyncio Link: the Switch only keeps it as an identity."""


def _ticket(
    identity: IdentityFile,
    action: Action,
    service: str = SERVICE,
    now: datetime = NOW,
    signer: Signer = NET.signer,
) -> str:
    return signer.sign_ticket(identity.spiffe_id, service, action, now)[1]


def _frame(ftype: int, circuit: int = 0, payload: bytes = b"", flags: int = 0) -> Frame:
    return Frame(ftype, flags, circuit, payload)


def _out(peer: SwitchLink) -> list[Frame]:
    """What the switch queued for `peer` (and clear it)."""
    data = b"".join(peer.session.poll_transmit())
    return [Frame(f.type, f.flags, f.circuit, bytes(f.payload)) for f in FrameDecoder().feed(data)]


class Switch:
    """A router Switch plus helpers to feed it frames from named links."""

    def __init__(self, clock: FakeClock | None = None, limits: SwitchLimits | None = None) -> None:
        self.clock = clock or FakeClock(NOW)
        self.forwarder = RouterSwitch(lambda: NET.bundle, "r1", limits)

    def link(self, identity: IdentityFile, hello: bool = True, kind: str = "device") -> SwitchLink:
        peer = self.forwarder.add_link(FakeLink(), identity.spiffe_id, kind, self.clock.now())
        if hello:
            assert self.feed(peer, _hello()) is None
            assert [f.type for f in _out(peer)] == [FrameType.HELLO]
        return peer

    def feed(self, source: SwitchLink, *frames: Frame) -> tuple[ErrorCode, str] | None:
        return self.forwarder.frames(source, list(frames), self.clock.now())

    def bind(self, host: SwitchLink, binding: int = 7) -> None:
        fields = {"ticket": _ticket(WEB, Action.BIND), "service": SERVICE}
        assert self.feed(host, _frame(FrameType.BIND, binding, encode_control(fields))) is None
        assert [f.type for f in _out(host)] == [FrameType.BIND_OK]

    def dial(self, dialer: SwitchLink, circuit: int = 1, **overrides: Any) -> None:
        fields = {"ticket": _ticket(ALICE, Action.DIAL), "service": SERVICE, "window": MIN_WINDOW}
        fields.update(overrides)
        self.feed(dialer, _frame(FrameType.DIAL, circuit, encode_control(fields, b"noise-1")))

    def open_circuit(self) -> tuple[SwitchLink, SwitchLink, int]:
        """A dialer and a host with one open circuit; returns the host's circuit id."""
        dialer, host = self.link(ALICE), self.link(WEB)
        self.bind(host)
        self.dial(dialer, 1)
        (connect,) = _out(host)
        accept = encode_control({"window": MIN_WINDOW}, b"noise-2")
        assert self.feed(host, _frame(FrameType.ACCEPT, connect.circuit, accept)) is None
        assert self.feed(dialer, _frame(FrameType.HANDSHAKE, 1, b"noise-3")) is None
        assert [f.type for f in _out(dialer)] == [FrameType.ACCEPT]
        assert [f.type for f in _out(host)] == [FrameType.HANDSHAKE]
        return dialer, host, connect.circuit


def _hello(version: int = PROTOCOL_VERSION) -> Frame:
    return _frame(FrameType.HELLO, 0, encode_control({"v": version, "role": "endpoint"}))


def _reset(frames: list[Frame]) -> tuple[ErrorCode, str]:
    assert [f.type for f in frames] == [FrameType.RESET], frames
    return decode_error(frames[0].payload)


# -- the link ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (_frame(FrameType.PING, 0, b"12345678"), ErrorCode.PROTOCOL_ERROR),
        (_frame(FrameType.DIAL, 1, b""), ErrorCode.PROTOCOL_ERROR),
        (_frame(FrameType.HELLO, 3, encode_control({"v": 1})), ErrorCode.PROTOCOL_ERROR),
        (_hello(version=2), ErrorCode.UNSUPPORTED_VERSION),
        (_frame(FrameType.HELLO, 0, b"\x00\x04{no]"), ErrorCode.BAD_CONTROL_PAYLOAD),
    ],
)
def test_a_link_must_start_with_a_good_hello(first: Frame, code: ErrorCode) -> None:
    switch = Switch()
    peer = switch.link(ALICE, hello=False)
    closing = switch.feed(peer, first)
    assert closing is not None and closing[0] is code
    (goaway,) = _out(peer)  # the link says why it closes, and says nothing else
    assert goaway.type == FrameType.GOAWAY and decode_error(goaway.payload)[0] is code
    assert switch.forwarder.counters[code.code] == 1


def test_ping_is_answered_and_goodbye_is_not_an_error() -> None:
    switch = Switch()
    peer = switch.link(ALICE)
    assert switch.feed(peer, _frame(FrameType.PING, 0, b"abc")) is None
    assert [(f.type, f.payload) for f in _out(peer)] == [(FrameType.PONG, b"abc")]
    closing = switch.feed(peer, _frame(FrameType.GOAWAY, 0, b""))
    assert closing is not None and closing[0] is ErrorCode.NO_ERROR


@pytest.mark.parametrize(
    "frame",
    [
        _frame(FrameType.PING, 0, b"x" * 65),
        _frame(FrameType.HELLO, 0, encode_control({"v": 1})),
        _frame(FrameType.PING, 5, b""),
        _frame(FrameType.CONNECT, 2, b""),
        _frame(FrameType.BIND_OK, 2, b""),
    ],
)
def test_frames_an_endpoint_may_not_send_close_the_link(frame: Frame) -> None:
    switch = Switch()
    peer = switch.link(ALICE)
    closing = switch.feed(peer, frame)
    assert closing is not None and closing[0] is ErrorCode.PROTOCOL_ERROR


# -- binding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"ticket": _ticket(WEB, Action.DIAL), "service": SERVICE}, ErrorCode.TICKET_WRONG_SERVICE),
        (
            {"ticket": _ticket(ALICE, Action.BIND), "service": SERVICE},
            ErrorCode.TICKET_WRONG_IDENTITY,
        ),
        ({"ticket": "ut1.junk.junk", "service": SERVICE}, ErrorCode.TICKET_INVALID),
        ({"service": SERVICE}, ErrorCode.BAD_CONTROL_PAYLOAD),
        (None, ErrorCode.BAD_CONTROL_PAYLOAD),
    ],
)
def test_a_refused_bind_gets_bind_err_and_the_link_lives(
    fields: dict[str, Any] | None, code: ErrorCode
) -> None:
    switch = Switch()
    host = switch.link(WEB)
    payload = encode_control(fields) if fields is not None else b"\x00\x03[1]"
    assert switch.feed(host, _frame(FrameType.BIND, 9, payload)) is None
    (answer,) = _out(host)
    assert (answer.type, answer.circuit) == (FrameType.BIND_ERR, 9)
    assert decode_error(answer.payload)[0] is code
    assert len(switch.forwarder.terminators) == 0
    switch.bind(host, 9)  # a good BIND on the same link still works
    assert len(switch.forwarder.terminators) == 1
    assert switch.feed(host, _frame(FrameType.UNBIND, 9)) is None
    assert len(switch.forwarder.terminators) == 0


# -- dialing ----------------------------------------------------------------------------------


def test_dial_reaches_the_host_with_the_dialers_identity_and_window() -> None:
    switch = Switch()
    dialer, host = switch.link(ALICE), switch.link(WEB)
    switch.bind(host, binding=7)
    switch.dial(dialer, 1)
    (connect,) = _out(host)
    assert connect.type == FrameType.CONNECT and connect.circuit % 2 == 0
    ctl = decode_control(connect.payload)
    assert ctl.fields["dialer"] == ALICE.spiffe_id
    assert ctl.fields["binding"] == 7 and ctl.fields["window"] == MIN_WINDOW
    assert ctl.blob == b"noise-1"
    assert switch.forwarder.circuits == 1


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"ticket": _ticket(ALICE, Action.DIAL, signer=Signer.generate())}, "ticket_invalid"),
        ({"ticket": "forged"}, "ticket_invalid"),
        (
            {"ticket": _ticket(ALICE, Action.DIAL, now=NOW - timedelta(hours=1))},
            "ticket_expired",
        ),
        ({"ticket": _ticket(WEB, Action.DIAL)}, "ticket_wrong_identity"),
        ({"ticket": _ticket(ALICE, Action.DIAL, "billing")}, "ticket_wrong_service"),
        ({"ticket": _ticket(ALICE, Action.BIND)}, "ticket_wrong_service"),
        ({"window": 10}, "bad_control_payload"),
        ({"service": 5}, "bad_control_payload"),
        ({"service": "billing", "ticket": _ticket(ALICE, Action.DIAL, "billing")}, "no_terminator"),
        # An in-session open for a host process not bound here (the host bound no instance).
        ({"host": WEB.spiffe_id, "instance": "0123456789abcdef"}, "instance_gone"),
        ({"host": WEB.spiffe_id, "instance": "x" * 65}, "bad_control_payload"),
        # No host of the service at all (no route yet either): as for any dial.
        (
            {
                "service": "billing",
                "ticket": _ticket(ALICE, Action.DIAL, "billing"),
                "host": WEB.spiffe_id,
                "instance": "0123456789abcdef",
            },
            "no_terminator",
        ),
    ],
)
def test_a_refused_dial_is_reset_with_its_code_and_never_reaches_the_host(
    overrides: dict[str, Any], code: str
) -> None:
    switch = Switch()
    dialer, host = switch.link(ALICE), switch.link(WEB)
    switch.bind(host)
    switch.dial(dialer, 3, **overrides)
    error, _ = _reset(_out(dialer))
    assert error.code == code
    assert _out(host) == []
    assert switch.forwarder.circuits == 0
    assert switch.forwarder.counters[code] == 1


def test_an_open_naming_a_host_process_reaches_that_process_and_names_it_on() -> None:
    switch = Switch()
    dialer, first, second = switch.link(ALICE), switch.link(WEB), switch.link(WEB)
    for host, instance in ((first, "aaaa"), (second, "bbbb")):
        fields = {"ticket": _ticket(WEB, Action.BIND), "service": SERVICE, "instance": instance}
        assert switch.feed(host, _frame(FrameType.BIND, 7, encode_control(fields))) is None
        assert [f.type for f in _out(host)] == [FrameType.BIND_OK]
    for circuit in (1, 3, 5, 7):  # the default strategy would take turns between them
        switch.dial(dialer, circuit, host=WEB.spiffe_id, instance="bbbb")
        assert _out(first) == []
        (connect,) = _out(second)
        assert decode_control(connect.payload).fields["instance"] == "bbbb"


def test_malformed_dial_json_resets_only_that_circuit() -> None:
    switch = Switch()
    dialer = switch.link(ALICE)
    assert switch.feed(dialer, _frame(FrameType.DIAL, 5, b'\x00\x09{"a": [1')) is None
    assert _reset(_out(dialer))[0] is ErrorCode.BAD_CONTROL_PAYLOAD


@pytest.mark.parametrize("circuit", [0, 2])
def test_dial_on_an_even_circuit_id_closes_the_link(circuit: int) -> None:
    switch = Switch()
    dialer, host = switch.link(ALICE), switch.link(WEB)
    switch.bind(host)
    fields = {"ticket": _ticket(ALICE, Action.DIAL), "service": SERVICE, "window": MIN_WINDOW}
    closing = switch.feed(dialer, _frame(FrameType.DIAL, circuit, encode_control(fields)))
    assert closing is not None and closing[0] is ErrorCode.PROTOCOL_ERROR
    assert _out(host) == []


def test_dial_on_a_circuit_id_in_use_closes_the_link() -> None:
    switch = Switch()
    dialer, _, _ = switch.open_circuit()
    fields = {"ticket": _ticket(ALICE, Action.DIAL), "service": SERVICE, "window": MIN_WINDOW}
    closing = switch.feed(dialer, _frame(FrameType.DIAL, 1, encode_control(fields)))
    assert closing is not None and closing[0] is ErrorCode.PROTOCOL_ERROR


# -- the circuit's opening order --------------------------------------------------------------


def test_accept_from_the_dialer_resets_the_circuit() -> None:
    switch = Switch()
    dialer, host = switch.link(ALICE), switch.link(WEB)
    switch.bind(host)
    switch.dial(dialer, 1)
    (connect,) = _out(host)
    accept = encode_control({"window": MIN_WINDOW})
    assert switch.feed(dialer, _frame(FrameType.ACCEPT, 1, accept)) is None
    assert _reset(_out(dialer))[0] is ErrorCode.PROTOCOL_ERROR
    host_frames = _out(host)
    assert _reset(host_frames)[0] is ErrorCode.PROTOCOL_ERROR
    assert host_frames[0].circuit == connect.circuit
    assert switch.forwarder.circuits == 0


def test_a_second_accept_cannot_reopen_the_window() -> None:
    switch = Switch()
    dialer, host, circuit = switch.open_circuit()
    accept = encode_control({"window": MIN_WINDOW})
    assert switch.feed(host, _frame(FrameType.ACCEPT, circuit, accept)) is None
    assert _reset(_out(host))[0] is ErrorCode.PROTOCOL_ERROR
    assert _reset(_out(dialer))[0] is ErrorCode.PROTOCOL_ERROR


def test_handshake_before_accept_or_twice_resets_the_circuit() -> None:
    switch = Switch()
    dialer, host = switch.link(ALICE), switch.link(WEB)
    switch.bind(host)
    switch.dial(dialer, 1)
    _out(host)
    assert switch.feed(dialer, _frame(FrameType.HANDSHAKE, 1, b"early")) is None
    assert _reset(_out(dialer))[0] is ErrorCode.PROTOCOL_ERROR

    switch = Switch()
    dialer, host, _ = switch.open_circuit()
    assert switch.feed(dialer, _frame(FrameType.HANDSHAKE, 1, b"again")) is None
    assert _reset(_out(dialer))[0] is ErrorCode.PROTOCOL_ERROR


def test_bad_accept_window_resets_both_sides() -> None:
    switch = Switch()
    dialer, host = switch.link(ALICE), switch.link(WEB)
    switch.bind(host)
    switch.dial(dialer, 1)
    (connect,) = _out(host)
    accept = encode_control({"window": 1})
    assert switch.feed(host, _frame(FrameType.ACCEPT, connect.circuit, accept)) is None
    assert _reset(_out(dialer))[0] is ErrorCode.BAD_CONTROL_PAYLOAD
    assert _reset(_out(host))[0] is ErrorCode.BAD_CONTROL_PAYLOAD


# -- relaying and flow control ----------------------------------------------------------------


def test_data_and_credit_are_relayed_with_rewritten_ids() -> None:
    switch = Switch()
    dialer, host, circuit = switch.open_circuit()
    switch.feed(dialer, _frame(FrameType.DATA, 1, b"s" * 1000))
    (data,) = _out(host)
    assert (data.type, data.circuit, data.payload) == (FrameType.DATA, circuit, b"s" * 1000)
    switch.feed(host, _frame(FrameType.CREDIT, circuit, struct.pack("!I", 1000)))
    (credit,) = _out(dialer)
    assert (credit.type, credit.circuit) == (FrameType.CREDIT, 1)


def test_a_read_of_relayed_data_is_quiet_and_anything_else_is_not() -> None:
    """The shell's fast path: after a quiet read it writes `poll_relayed()` and skips the
    deadline, shed and announcement polls, so a read that is not only relay must say so."""
    switch = Switch()
    dialer, host, circuit = switch.open_circuit()
    forwarder = switch.forwarder
    switch.feed(dialer, _frame(FrameType.DATA, 1, b"s" * 100), _frame(FrameType.DATA, 1, b"t"))
    assert forwarder.quiet
    relayed = forwarder.poll_relayed()
    assert [link for link, _ in relayed] == [host]
    data = FrameDecoder().feed(b"".join(relayed[0][1]))
    assert [(f.circuit, bytes(f.payload)) for f in data] == [(circuit, b"s" * 100), (circuit, b"t")]
    assert forwarder.poll_relayed() == [] and host.outbox == []
    switch.feed(dialer, _frame(FrameType.DATA, 1, b"u"), _frame(FrameType.PING, 0, b"12345678"))
    assert not forwarder.quiet  # the PONG and the keepalive go the whole way
    assert [f.type for f in _out(dialer)] == [FrameType.PONG]
    chunk = b"d" * MIN_WINDOW
    switch.feed(dialer, _frame(FrameType.DATA, 1, chunk))  # beyond the window: a reset
    assert [f.type for f in _out(dialer)] == [FrameType.RESET]


def test_data_beyond_the_window_resets_both_with_flow_control_error() -> None:
    switch = Switch()
    dialer, host, _ = switch.open_circuit()
    chunk = b"d" * (MIN_WINDOW // 2)
    switch.feed(dialer, _frame(FrameType.DATA, 1, chunk), _frame(FrameType.DATA, 1, chunk))
    assert [f.type for f in _out(host)] == [FrameType.DATA, FrameType.DATA]
    switch.feed(dialer, _frame(FrameType.DATA, 1, b"!"))
    assert _reset(_out(dialer))[0] is ErrorCode.FLOW_CONTROL_ERROR
    assert _reset(_out(host))[0] is ErrorCode.FLOW_CONTROL_ERROR
    assert switch.forwarder.circuits == 0
    assert switch.forwarder.counters["flow_control_error"] == 1


def test_credit_restores_the_window() -> None:
    switch = Switch()
    dialer, host, circuit = switch.open_circuit()
    for _ in range(10):
        switch.feed(dialer, _frame(FrameType.DATA, 1, b"d" * MIN_WINDOW))
        switch.feed(host, _frame(FrameType.CREDIT, circuit, struct.pack("!I", MIN_WINDOW)))
    assert switch.forwarder.circuits == 1
    assert [f.type for f in _out(dialer)] == [FrameType.CREDIT] * 10


@pytest.mark.parametrize("credit", [struct.pack("!I", 2000), struct.pack("!I", 0), b"\x01\x02"])
def test_bogus_credit_resets_both(credit: bytes) -> None:
    switch = Switch()
    dialer, host, circuit = switch.open_circuit()
    switch.feed(dialer, _frame(FrameType.DATA, 1, b"s" * 1000))
    _out(host)
    switch.feed(host, _frame(FrameType.CREDIT, circuit, credit))
    assert _reset(_out(host))[0] is ErrorCode.FLOW_CONTROL_ERROR
    assert _reset(_out(dialer))[0] is ErrorCode.FLOW_CONTROL_ERROR


def test_both_fins_end_the_circuit_and_data_after_fin_is_refused() -> None:
    switch = Switch()
    dialer, host, circuit = switch.open_circuit()
    switch.feed(dialer, _frame(FrameType.DATA, 1, b"f" * 16, Flag.FIN))
    switch.feed(dialer, _frame(FrameType.DATA, 1, b"late" * 8))
    assert _reset(_out(dialer))[0] is ErrorCode.FLOW_CONTROL_ERROR

    switch = Switch()
    dialer, host, circuit = switch.open_circuit()
    switch.feed(dialer, _frame(FrameType.DATA, 1, b"f" * 16, Flag.FIN))
    switch.feed(host, _frame(FrameType.DATA, circuit, b"f" * 16, Flag.FIN))
    assert switch.forwarder.circuits == 0
    assert dialer.routes == {} and host.routes == {}
    # A CREDIT racing with the end is dropped and counted, not an error.
    assert switch.feed(host, _frame(FrameType.CREDIT, circuit, struct.pack("!I", 16))) is None
    assert switch.forwarder.counters["frames_unknown_circuit"] == 1


def test_reset_is_forwarded_and_ends_the_circuit() -> None:
    switch = Switch()
    dialer, host, circuit = switch.open_circuit()
    switch.feed(
        host, _frame(FrameType.RESET, circuit, encode_control({"code": 40, "reason": "no"}))
    )
    assert _reset(_out(dialer)) == (ErrorCode.REFUSED, "no")
    assert switch.forwarder.circuits == 0


@pytest.mark.parametrize(("gone", "code"), [("host", "host_gone"), ("dialer", "peer_gone")])
def test_a_dropped_link_resets_the_other_side(gone: str, code: str) -> None:
    switch = Switch()
    dialer, host, _ = switch.open_circuit()
    lost, survivor = (host, dialer) if gone == "host" else (dialer, host)
    switch.forwarder.link_gone(lost)
    handed = dict(switch.forwarder.poll_transmit())  # what the shell writes, per link
    assert list(handed) == [survivor]
    survivor.outbox.extend(handed[survivor])
    assert _reset(_out(survivor))[0].code == code
    assert switch.forwarder.circuits == 0
    assert len(switch.forwarder.terminators) == (1 if gone == "dialer" else 0)


# -- nothing an endpoint sends makes the forwarder raise ----------------------------------------

_PAYLOADS = st.sampled_from(
    [
        b"",
        b"\x00",
        struct.pack("!I", 100),
        b"\x00\x02{}",
        encode_control({"window": MIN_WINDOW}),
        encode_control(
            {"ticket": _ticket(ALICE, Action.DIAL), "service": SERVICE, "window": 70000}
        ),
        encode_control({"ticket": _ticket(WEB, Action.BIND), "service": SERVICE}),
        encode_control({"code": 1, "reason": "x"}),
        b"\xff" * 40,
    ]
)
_FRAMES = st.builds(
    _frame,
    st.sampled_from([int(t) for t in FrameType]),
    st.sampled_from([0, 1, 2, 3, 4]),
    _PAYLOADS,
    st.sampled_from([0, 1]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), _FRAMES), max_size=30))
def test_random_frames_never_raise_and_routes_stay_paired(steps: list[tuple[bool, Frame]]) -> None:
    switch = Switch()
    dialer, host = switch.link(ALICE), switch.link(WEB)
    switch.bind(host, 1)
    closed: set[int] = set()
    for from_host, frame in steps:
        source = host if from_host else dialer
        if id(source) in closed:
            continue
        if switch.feed(source, frame) is not None:
            closed.add(id(source))
            switch.forwarder.link_gone(source)
        routes = [r for peer in (dialer, host) for r in peer.routes.values()]
        assert switch.forwarder.circuits * 2 == len(routes)
        for route in routes:
            assert route.peer.peer is route
            assert route.peer.link.routes[route.peer.circuit] is route.peer
            assert route.account.in_flight <= route.account.window


# -- the admission cache -----------------------------------------------------------------------


def _dial_with(switch: Switch, dialer: SwitchLink, circuit: int, ticket: str) -> list[Frame]:
    switch.dial(dialer, circuit, ticket=ticket)
    return _out(dialer)


def test_a_remembered_ticket_is_still_refused_once_stale_or_expired() -> None:
    clock = FakeClock(NOW)
    bundle = NET.bundle
    switch = Switch(clock)
    switch.forwarder = RouterSwitch(lambda: bundle, "r1")
    dialer, host = switch.link(ALICE), switch.link(WEB)
    switch.bind(host)
    token = NET.signer.sign_ticket(ALICE.spiffe_id, SERVICE, Action.DIAL, NOW, epoch=5)[1]
    assert _dial_with(switch, dialer, 1, token) == []  # admitted (and remembered)
    assert [f.type for f in _out(host)] == [FrameType.CONNECT]
    assert _dial_with(switch, dialer, 3, token) == []  # admitted again from memory
    _out(host)

    switch.forwarder.epoch = 6  # a revocation the ticket predates
    assert _reset(_dial_with(switch, dialer, 5, token))[0].code == "ticket_stale"

    switch.forwarder.epoch = 5
    clock.step_wall(timedelta(hours=1))  # past the ticket's expiry
    assert _reset(_dial_with(switch, dialer, 7, token))[0].code == "ticket_expired"

    clock.step_wall(timedelta(hours=-1))
    bundle = NET.bundle.without_ticket_key(NET.signer.key_id)  # the key was rotated out
    assert _reset(_dial_with(switch, dialer, 9, token))[0].code == "ticket_invalid"


def test_a_remembered_ticket_never_serves_another_identity_or_service() -> None:
    switch = Switch()
    alice, web, host = switch.link(ALICE), switch.link(WEB), switch.link(WEB)
    switch.bind(host)
    token = _ticket(ALICE, Action.DIAL)
    assert _dial_with(switch, alice, 1, token) == []
    assert _reset(_dial_with(switch, web, 1, token))[0].code == "ticket_wrong_identity"
    switch.dial(alice, 3, ticket=token, service="billing")
    assert _reset(_out(alice))[0].code == "ticket_wrong_service"


# -- deadlines, quotas and rate limits (one client must not starve the rest) -------------------


def _dials(switch: Switch, dialer: SwitchLink, first: int, count: int) -> list[Frame]:
    token = _ticket(ALICE, Action.DIAL)
    fields = {"ticket": token, "service": SERVICE, "window": MIN_WINDOW}
    frames = [
        _frame(FrameType.DIAL, first + 2 * i, encode_control(fields, b"m1")) for i in range(count)
    ]
    switch.feed(dialer, *frames)
    return _out(dialer)


def test_a_handshake_that_never_finishes_is_reset_at_the_deadline() -> None:
    clock = FakeClock(NOW)
    switch = Switch(clock, SwitchLimits(handshake_timeout=10.0))
    dialer, host = switch.link(ALICE), switch.link(WEB)
    switch.bind(host)
    switch.dial(dialer, 1)
    (connect,) = _out(host)
    accept = encode_control({"window": MIN_WINDOW}, b"noise-2")
    switch.feed(host, _frame(FrameType.ACCEPT, connect.circuit, accept))
    _out(dialer)
    deadline = switch.forwarder.poll_timeout()
    assert deadline is not None and deadline.at == clock.mono + 10.0
    clock.advance(10.0)
    switch.forwarder.handle_timeout(clock.now())
    assert _reset(_out(dialer))[0] is ErrorCode.HANDSHAKE_TIMEOUT
    assert _reset(_out(host))[0] is ErrorCode.HANDSHAKE_TIMEOUT
    assert switch.forwarder.circuits == 0 and switch.forwarder.pending_handshakes == 0
    assert switch.forwarder.poll_timeout() is None


def test_pending_handshakes_are_capped_per_dialer_and_others_still_get_through() -> None:
    switch = Switch(limits=SwitchLimits(max_pending_per_identity=8))
    mallory, dialer, host = switch.link(ALICE), switch.link(ALICE), switch.link(WEB)
    switch.bind(host)
    refused = [_reset([f])[0] for f in _dials(switch, mallory, 1, 20)]
    assert refused == [ErrorCode.QUOTA_EXCEEDED] * 12  # 8 wait for their handshake
    assert len(_out(host)) == 8
    assert switch.forwarder.counters["quota_exceeded"] == 12
    # Another identity is not affected by ALICE's share.
    bob = NET.identity("bob")
    good = switch.link(bob)
    fields = {"ticket": _ticket(bob, Action.DIAL), "service": SERVICE, "window": MIN_WINDOW}
    switch.feed(good, _frame(FrameType.DIAL, 1, encode_control(fields, b"m1")))
    assert _out(good) == [] and [f.type for f in _out(host)] == [FrameType.CONNECT]
    del dialer


def test_forged_tickets_are_checked_at_most_at_the_budgeted_rate() -> None:
    clock = FakeClock(NOW)
    limits = SwitchLimits(ticket_checks_per_second=10, ticket_check_burst=20)
    switch = Switch(clock, limits)
    mallory = switch.link(ALICE)
    forged = encode_control({"ticket": "ut1.x.y", "service": SERVICE, "window": MIN_WINDOW})
    switch.feed(mallory, *[_frame(FrameType.DIAL, 1 + 2 * i, forged) for i in range(100)])
    codes = [_reset([f])[0] for f in _out(mallory)]
    assert codes.count(ErrorCode.TICKET_INVALID) == 20
    assert codes.count(ErrorCode.RATE_LIMITED) == 80
    assert switch.forwarder.counters["ticket_verifications"] == 20
    clock.advance(1.0)  # the bucket refills at its rate
    switch.feed(mallory, *[_frame(FrameType.DIAL, 301 + 2 * i, forged) for i in range(20)])
    assert [_reset([f])[0] for f in _out(mallory)].count(ErrorCode.TICKET_INVALID) == 10


def test_a_control_frame_flood_closes_only_that_link() -> None:
    switch = Switch(limits=SwitchLimits(control_frames_per_second=100, control_frame_burst=50))
    mallory, bystander, host = switch.link(ALICE), switch.link(ALICE), switch.link(WEB)
    switch.bind(host)
    junk = [_frame(FrameType.UNBIND, 99) for _ in range(200)]
    closing = switch.feed(mallory, *junk)
    assert closing is not None and closing[0] is ErrorCode.RATE_LIMITED
    switch.dial(bystander, 1)
    assert [f.type for f in _out(host)] == [FrameType.CONNECT]


def test_windows_above_the_routers_cap_are_refused() -> None:
    switch = Switch(limits=SwitchLimits(max_window=MIN_WINDOW))
    dialer, host = switch.link(ALICE), switch.link(WEB)
    switch.bind(host)
    switch.dial(dialer, 1, window=MIN_WINDOW + 1)
    assert _reset(_out(dialer))[0] is ErrorCode.QUOTA_EXCEEDED
    assert _out(host) == []


def test_a_reader_that_stops_is_bounded_by_the_links_budget() -> None:
    # Three circuits push at one dialer that never credits: past the link's budget its
    # heaviest circuit is reset; what the router holds towards the link stays bounded.
    limits = SwitchLimits(in_flight_per_link=2 * MIN_WINDOW, in_flight_per_circuit=0)
    switch = Switch(limits=limits)
    dialer, host = switch.link(ALICE), switch.link(WEB)
    switch.bind(host)
    circuits = []
    for circuit in (1, 3, 5):
        switch.dial(dialer, circuit)
        (connect,) = _out(host)
        accept = encode_control({"window": MIN_WINDOW}, b"noise-2")
        switch.feed(host, _frame(FrameType.ACCEPT, connect.circuit, accept))
        switch.feed(dialer, _frame(FrameType.HANDSHAKE, circuit, b"noise-3"))
        _out(host)
        circuits.append(connect.circuit)
    _out(dialer), _out(host)
    chunk = b"x" * (MIN_WINDOW - 16)
    for circuit in circuits:
        switch.feed(host, _frame(FrameType.DATA, circuit, chunk))
    assert dialer.in_flight <= 2 * MIN_WINDOW
    resets = [f for f in _out(dialer) if f.type == FrameType.RESET]
    assert [decode_error(f.payload)[0] for f in resets] == [ErrorCode.QUOTA_EXCEEDED]
    assert switch.forwarder.circuits == 2
    assert switch.forwarder.in_flight == dialer.in_flight


def test_many_circuits_within_their_windows_are_never_shed() -> None:
    # Honest concurrency: every circuit keeps to its window, so the per-circuit allowance
    # covers them however many there are (a host receiving 100 uploads at once).
    limits = SwitchLimits(in_flight_per_link=MIN_WINDOW, in_flight_per_circuit=MIN_WINDOW)
    switch = Switch(limits=limits)
    dialer, host = switch.link(ALICE), switch.link(WEB)
    switch.bind(host)
    circuits = []
    for circuit in range(1, 21, 2):
        switch.dial(dialer, circuit)
        (connect,) = _out(host)
        accept = encode_control({"window": MIN_WINDOW}, b"noise-2")
        switch.feed(host, _frame(FrameType.ACCEPT, connect.circuit, accept))
        switch.feed(dialer, _frame(FrameType.HANDSHAKE, circuit, b"noise-3"))
        _out(host)
        circuits.append(connect.circuit)
    _out(dialer)
    for circuit in circuits:  # every host pushes a full window the dialer has not read yet
        switch.feed(host, _frame(FrameType.DATA, circuit, b"x" * (MIN_WINDOW - 16)))
    assert dialer.in_flight == 10 * (MIN_WINDOW - 16)
    assert [f for f in _out(dialer) if f.type == FrameType.RESET] == []
    assert switch.forwarder.circuits == 10
