"""What the end-to-end session must not take on trust, tried on the sans-IO machines.

A dialer and a host `Circuit` are joined by a few lines standing in for the router; tests
edit frames in flight as a malicious router could (forged RESET, flipped flags, oversize or
reflected DATA) and hand the host dial tickets it must refuse (stale epoch, wrong port).
Rekeying is tried across the data and time limits with random write sizes, both ways.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.pki import IdentityFile, generate_tls_key, make_csr
from umbranet.pki.tickets import TICKET_PREFIX, Action
from umbranet.pki.tokens import encode_token
from umbranet.proto.circuit import Circuit, Closed, State
from umbranet.proto.e2e import (
    DialerHandshake,
    E2EError,
    E2ESession,
    HostHandshake,
    LocalCredentials,
    RekeyLimits,
    certificate_key_fingerprint,
)
from umbranet.proto.noise import CipherState
from umbranet.proto.text import printable
from umbranet.testing import LocalNetwork
from umbranet.wire import (
    MAX_DATA_PAYLOAD,
    ErrorCode,
    Flag,
    Frame,
    FrameDecoder,
    FrameType,
    decode_control,
    encode_control,
)
from umbranet.wire.control import encode_error
from umbranet.wire.frames import encode_frame

SERVICE = "echo"
NET = LocalNetwork()
ALICE = NET.identity("alice", attributes=("client",))
WEB = NET.identity("web", attributes=("server", "team-secret"))
Edit = Callable[[list[Frame]], list[Frame]]


def _now() -> datetime:
    return datetime.now(UTC)


def _credentials(identity: IdentityFile) -> LocalCredentials:
    return LocalCredentials(identity.cert_pem, identity.noise_private_key, identity.bundle)


def _ticket(identity: IdentityFile, action: Action, **claims: Any) -> str:
    attributes = NET.attributes.get(identity.spiffe_id, ())
    return NET.signer.sign_ticket(
        identity.spiffe_id, SERVICE, action, _now(), attributes=attributes, **claims
    )[1]


def _frames(buffers: list[bytes]) -> list[Frame]:
    if not buffers:
        return []
    return [
        Frame(f.type, f.flags, f.circuit, bytes(f.payload))
        for f in FrameDecoder().feed(b"".join(buffers))
    ]


class Link:
    """A dialer and a host circuit; `to_host`/`to_dialer` relay what each queued."""

    def __init__(
        self,
        *,
        dial_ticket: str | None = None,
        port: int | None = None,
        dial_limits: RekeyLimits | None = None,
        host: dict[str, Any] | None = None,
        window: int = 1 << 20,
    ) -> None:
        ticket = dial_ticket or _ticket(ALICE, Action.DIAL)
        handshake = DialerHandshake(
            SERVICE, ticket, _credentials(ALICE), port=port, limits=dial_limits
        )
        self.dialer = Circuit.dial(1, SERVICE, handshake, window=window)
        (dial,) = _frames(self.dialer.poll_transmit())
        fields = {"service": SERVICE, "binding": 1, "ticket": ticket}
        fields |= {"dialer": ALICE.spiffe_id, "window": window}
        blob = decode_control(dial.payload).blob
        (connect,) = _frames([encode_frame(FrameType.CONNECT, 2, encode_control(fields, blob))])
        host_handshake = HostHandshake(
            SERVICE, _ticket(WEB, Action.BIND), _credentials(WEB), **(host or {})
        )
        self.host = Circuit.accept(2, connect, host_handshake, window=window)
        self.seen: list[Frame] = []  # every frame relayed, for tests that look at the wire

    def to_dialer(self, edit: Edit | None = None, now: datetime | None = None) -> int:
        return self._relay(self.host, self.dialer, edit, now)

    def to_host(self, edit: Edit | None = None, now: datetime | None = None) -> int:
        return self._relay(self.dialer, self.host, edit, now)

    def settle(self, now: datetime | None = None) -> None:
        while self.to_host(now=now) + self.to_dialer(now=now):
            pass

    def _relay(
        self, source: Circuit, target: Circuit, edit: Edit | None, now: datetime | None
    ) -> int:
        frames = _frames(source.poll_transmit())
        frames = edit(frames) if edit else frames
        for frame in frames:
            self.seen.append(frame)
            target.handle_frame(
                Frame(frame.type, frame.flags, target.id, frame.payload), now or _now()
            )
        return len(frames)


def _open(**options: Any) -> Link:
    link = Link(**options)
    link.settle()
    assert link.dialer.state is State.OPEN and link.host.state is State.OPEN
    return link


def _closed(circuit: Circuit) -> Closed:
    events = []
    while (event := circuit.poll_event()) is not None:
        events.append(event)
    (closed,) = [e for e in events if isinstance(e, Closed)]
    return closed


def _take_all(circuit: Circuit) -> bytes:
    out = bytearray()
    while chunk := circuit.take(1 << 20):
        out += chunk
    return bytes(out)


def _reset(code: ErrorCode, reason: str) -> Frame:
    return Frame(FrameType.RESET, 0, 0, encode_error(code, reason))


# -- #1: a RESET from the wire is never a clean end ----


def test_forged_reset_no_error_mid_transfer_is_unauthenticated_at_both_ends() -> None:
    link = _open()
    link.dialer.write(b"u" * 200_000)
    link.host.write(b"d" * 200_000)
    # The router passes one frame each way, then cuts and says "no error" to both ends.
    link.to_host(lambda frames: frames[:2])
    link.to_dialer(lambda frames: frames[:2])
    link.dialer.handle_frame(_reset(ErrorCode.NO_ERROR, "done"), _now())
    link.host.handle_frame(_reset(ErrorCode.NO_ERROR, "done"), _now())
    for circuit in (link.dialer, link.host):
        _take_all(circuit)
        closed = _closed(circuit)
        assert closed.code is ErrorCode.NO_ERROR and closed.by_peer
        assert not closed.authenticated and not closed.clean
        assert circuit.at_eof and not circuit.remote_fin  # ended, but not by the peer's FIN


def test_peer_abort_is_sealed_and_authenticated() -> None:
    link = _open()
    link.host.reset(ErrorCode.REFUSED, "not for you")
    sent = _frames(link.host.poll_transmit())
    assert [(f.type, f.flags) for f in sent] == [(FrameType.DATA, Flag.ABORT), (FrameType.RESET, 0)]
    for frame in sent:
        link.dialer.handle_frame(Frame(frame.type, frame.flags, 1, frame.payload), _now())
    closed = _closed(link.dialer)
    assert (closed.code, closed.reason, closed.authenticated) == (
        ErrorCode.REFUSED,
        "not for you",
        True,
    )


def test_abort_without_credit_leaves_only_the_unauthenticated_reset() -> None:
    link = _open(window=65_552)
    link.host.write(b"x" * 65_536)  # the dialer's whole window, unread
    link.host.reset(ErrorCode.CANCELLED, "bye")
    sent = _frames(link.host.poll_transmit())
    assert [f.type for f in sent] == [FrameType.DATA, FrameType.RESET]
    assert not sent[0].flags & Flag.ABORT


# -- #20: the associated data binds type, every flag, and the direction ----


def _first_data(edit: Callable[[Frame], Frame]) -> Edit:
    def apply(frames: list[Frame]) -> list[Frame]:
        index = next(i for i, f in enumerate(frames) if f.type == FrameType.DATA)
        frames[index] = edit(frames[index])
        return frames

    return apply


def _flags(extra: int) -> Edit:
    return _first_data(lambda f: Frame(f.type, f.flags ^ extra, f.circuit, f.payload))


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (_flags(0x80), ErrorCode.PROTOCOL_ERROR),  # a flag no version defines
        (_flags(0x08), ErrorCode.PROTOCOL_ERROR),
        (_flags(Flag.KEY_PHASE), ErrorCode.DECRYPT_FAILED),  # a forged key update
        (_flags(Flag.ABORT), ErrorCode.DECRYPT_FAILED),  # DATA passed off as the peer's abort
        (_flags(Flag.FIN), ErrorCode.DECRYPT_FAILED),  # a forged end of data
        (
            _first_data(lambda f: Frame(f.type, f.flags, f.circuit, bytes(MAX_DATA_PAYLOAD + 1))),
            ErrorCode.FRAME_TOO_LARGE,
        ),
    ],
    ids=["flag-0x80", "flag-0x08", "key-phase", "abort", "fin", "oversize"],
)
def test_edited_data_flags_and_oversize_data_reset_the_circuit(edit: Edit, code: ErrorCode) -> None:
    link = _open()
    link.dialer.write(b"a" * 1000)
    link.to_host(edit)
    assert link.host.state is State.CLOSED
    assert _closed(link.host).code is code
    assert link.host.readable_bytes == 0  # nothing of the edited frame was delivered


def test_a_frame_reflected_back_to_its_sender_does_not_open() -> None:
    # Even if both directions shared one key, the direction in the associated data tells a
    # dialer->host frame from a host->dialer one.
    key = bytes(range(32))
    now = _now()
    dialer = E2ESession(CipherState(key=key), CipherState(key=key), dialer=True, now=now)
    host = E2ESession(CipherState(key=key), CipherState(key=key), dialer=False, now=now)
    flags, sealed = dialer.seal(b"to the host")
    with pytest.raises(E2EError) as caught:
        dialer.open(sealed, flags)
    assert caught.value.code is ErrorCode.DECRYPT_FAILED
    assert host.open(sealed, flags) == b"to the host"


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=12),
    victim=st.integers(0, 11),
    change=st.integers(1, 255),
    limit=st.integers(1, 8000),
)
def test_no_flag_change_on_any_frame_is_ever_accepted(
    sizes: list[int], victim: int, change: int, limit: int
) -> None:
    key = bytes(range(32))
    now = _now()
    limits = RekeyLimits(bytes=limit)  # small: key phases flip along the way
    sender = E2ESession(
        CipherState(key=key), CipherState(key=key), dialer=True, now=now, limits=limits
    )
    receiver = E2ESession(CipherState(key=key), CipherState(key=key), dialer=False, now=now)
    victim %= len(sizes)
    for index, size in enumerate(sizes):
        flags, sealed = sender.seal(bytes([index % 256]) * size, int(Flag.FIN) * (index == victim))
        if index == victim:
            with pytest.raises(E2EError) as caught:
                receiver.open(sealed, flags ^ change)
            assert caught.value.code in {ErrorCode.PROTOCOL_ERROR, ErrorCode.DECRYPT_FAILED}
            return
        assert receiver.open(sealed, flags) == bytes([index % 256]) * size


# -- #14: rekey by data and by age, both ways, across the boundary ----


@settings(max_examples=25, deadline=None)
@given(
    limit=st.sampled_from([70_000, 131_072, 300_000]),
    sizes=st.lists(
        st.one_of(st.integers(1, 5_000), st.integers(60_000, 320_000)), min_size=1, max_size=8
    ),
)
def test_rekey_at_the_data_limit_keeps_every_byte_both_ways(limit: int, sizes: list[int]) -> None:
    limits = RekeyLimits(bytes=limit)
    link = _open(dial_limits=limits, host={"limits": limits})
    up, down = bytearray(), bytearray()
    got_up, got_down = bytearray(), bytearray()
    for index, size in enumerate(sizes):
        chunk = hashlib.sha256(f"{index}".encode()).digest() * (size // 32 + 1)
        link.dialer.write(chunk[:size])
        link.host.write(chunk[size // 2 : size // 2 + size])
        up += chunk[:size]
        down += chunk[size // 2 : size // 2 + size]
        link.settle()
        got_up += _take_all(link.host)
        got_down += _take_all(link.dialer)
        link.settle()
    link.dialer.write_eof()
    link.host.write_eof()
    link.settle()
    got_up += _take_all(link.host)
    got_down += _take_all(link.dialer)
    assert bytes(got_up) == bytes(up) and bytes(got_down) == bytes(down)
    assert link.dialer.error is not None and link.dialer.error.clean
    dialer, host = link.dialer.statistics(), link.host.statistics()
    assert dialer["rekeys_sent"] == host["rekeys_received"]
    assert host["rekeys_sent"] == dialer["rekeys_received"]
    # Each key sealed at most the limit plus one frame.
    assert dialer["rekeys_sent"] >= len(up) // (limit + MAX_DATA_PAYLOAD)
    if len(up) > limit + MAX_DATA_PAYLOAD:
        assert dialer["rekeys_sent"] >= 1
        assert any(f.flags & Flag.KEY_PHASE for f in link.seen if f.type == FrameType.DATA)


def test_rekey_after_the_time_limit_at_the_next_frame() -> None:
    limits = RekeyLimits(after=timedelta(minutes=5))
    start = _now()
    link = Link(dial_limits=limits, host={"limits": limits})
    link.settle(now=start)
    deadline, reason = link.dialer.poll_timeout() or (None, "")
    assert reason == "rekey" and deadline == start + timedelta(minutes=5)
    link.dialer.write(b"before")
    link.settle(now=start)
    assert link.dialer.statistics()["rekeys_sent"] == 0
    link.dialer.handle_timer(start + timedelta(minutes=5, seconds=1))
    link.dialer.write(b" after")
    sent = _frames(link.dialer.poll_transmit())
    (data,) = [f for f in sent if f.type == FrameType.DATA]
    assert data.flags & Flag.KEY_PHASE
    link.host.handle_frame(Frame(data.type, data.flags, 2, data.payload), start)
    assert _take_all(link.host) == b"before after"
    assert link.host.statistics()["rekeys_received"] == 1
    next_deadline, _ = link.dialer.poll_timeout() or (start, "")
    assert next_deadline > start + timedelta(minutes=5)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 400), st.integers(1, 70_000), st.booleans()),
        min_size=1,
        max_size=15,
    )
)
def test_rekey_by_age_across_the_boundary_both_ways(steps: list[tuple[int, int, bool]]) -> None:
    """Random clock steps (seconds) around a 5-minute limit and random writes either way."""
    limits = RekeyLimits(after=timedelta(minutes=5))
    start = _now()
    link = Link(dial_limits=limits, host={"limits": limits})
    link.settle(now=start)
    now = start
    sent = {"dialer": bytearray(), "host": bytearray()}
    got = {"dialer": bytearray(), "host": bytearray()}
    for index, (seconds, size, from_dialer) in enumerate(steps):
        now += timedelta(seconds=seconds)
        link.dialer.handle_timer(now)
        link.host.handle_timer(now)
        writer, name = (link.dialer, "dialer") if from_dialer else (link.host, "host")
        data = bytes([index]) * size
        writer.write(data)
        sent[name] += data
        link.settle(now=now)
        # The key that just sealed `data` is younger than the limit (it moved on if not).
        deadline, _ = writer.poll_timeout() or (start, "")
        assert deadline > now
        got["host"] += _take_all(link.host)
        got["dialer"] += _take_all(link.dialer)
        link.settle(now=now)
    assert got["host"] == sent["dialer"] and got["dialer"] == sent["host"]
    for circuit, other in ((link.dialer, link.host), (link.host, link.dialer)):
        assert circuit.statistics()["rekeys_sent"] == other.statistics()["rekeys_received"]


def test_a_peer_that_never_rekeys_is_cut_off() -> None:
    link = _open(
        dial_limits=RekeyLimits(bytes=1 << 31), host={"limits": RekeyLimits(receive_max=200_000)}
    )
    link.dialer.write(b"z" * 300_000)
    link.to_host()
    assert _closed(link.host).code is ErrorCode.KEY_LIMIT_EXCEEDED


# -- #13, #15: what only the host can check in the dial ticket ----


def test_host_refuses_a_dial_ticket_from_before_the_newest_epoch_it_knows() -> None:
    stale = Link(dial_ticket=_ticket(ALICE, Action.DIAL, epoch=3), host={"min_epoch": 5})
    stale.settle()
    assert _closed(stale.host).code is ErrorCode.TICKET_STALE
    refusal = stale.dialer.error
    assert refusal is not None and refusal.code is ErrorCode.TICKET_STALE
    assert refusal.authenticated  # sealed by the host: no router could have made it up
    _open(dial_ticket=_ticket(ALICE, Action.DIAL, epoch=5), host={"min_epoch": 5})


def _bound_ticket(identity: IdentityFile, cert_pem: bytes) -> str:
    """A dial ticket bound (claim `cnf`) to the certificate `cert_pem`."""
    ticket, _ = NET.signer.sign_ticket(identity.spiffe_id, SERVICE, Action.DIAL, _now())
    claims = ticket.to_claims() | {"cnf": [certificate_key_fingerprint(cert_pem)]}
    return encode_token(TICKET_PREFIX, claims, NET.signer._key)


def test_host_refuses_a_ticket_bound_to_another_certificate() -> None:
    # Alice's other certificate (same identity and noise key, e.g. one since revoked).
    other = NET.ca.issue_svid(
        make_csr(generate_tls_key()), ALICE.spiffe_id, ALICE.noise_public_key, _now()
    ).public_bytes(Encoding.PEM)
    link = Link(dial_ticket=_bound_ticket(ALICE, other))
    link.settle()
    assert _closed(link.host).code is ErrorCode.TICKET_UNBOUND
    _open(dial_ticket=_bound_ticket(ALICE, ALICE.cert_pem), host={"require_bound": True})


def test_host_that_knows_tickets_are_bound_refuses_an_unbound_one() -> None:
    link = Link(host={"require_bound": True})
    link.settle()
    assert _closed(link.host).code is ErrorCode.TICKET_UNBOUND


@pytest.mark.parametrize(
    ("granted", "asked", "served"),
    [
        (80, 443, None),  # asks for a port its ticket does not grant
        (None, 443, None),  # asks for a port; the ticket was decided for no port
        (None, None, frozenset({443})),  # a port-less ticket at a host serving by port
        (80, None, frozenset({443})),  # granted a port this host does not serve
        (80, 80, frozenset({443})),
    ],
)
def test_host_refuses_a_stream_whose_port_the_ticket_does_not_grant(
    granted: int | None, asked: int | None, served: frozenset[int] | None
) -> None:
    link = Link(
        dial_ticket=_ticket(ALICE, Action.DIAL, port=granted), port=asked, host={"ports": served}
    )
    link.settle()
    assert _closed(link.host).code is ErrorCode.PORT_NOT_GRANTED


@pytest.mark.parametrize("served", [None, frozenset({443, 8443})])
def test_the_granted_port_reaches_the_host(served: frozenset[int] | None) -> None:
    link = _open(
        dial_ticket=_ticket(ALICE, Action.DIAL, port=443), port=443, host={"ports": served}
    )
    assert link.host.peer is not None and link.host.peer.port == 443


# -- #19: the dialer learns who the host is, not its attributes ----


def test_dialer_keeps_only_the_hosts_identity() -> None:
    link = _open()
    host = link.dialer.peer
    assert host is not None and host.spiffe_id == WEB.spiffe_id
    assert host.attributes == () and host.ticket_id == ""
    dialer = link.host.peer
    assert dialer is not None and dialer.attributes == ("client",)  # the host still needs these


# -- #22: peer-supplied text is escaped before anyone logs it ----

HOSTILE = "done\n2026-12-04 INFO forged record\r\x1b[2J\u2028end"


def test_reset_and_abort_reasons_from_the_peer_are_escaped() -> None:
    link = _open()
    link.dialer.handle_frame(_reset(ErrorCode.REFUSED, HOSTILE), _now())
    forged = _closed(link.dialer)
    link2 = _open()
    link2.host.reset(ErrorCode.REFUSED, HOSTILE)
    link2.to_dialer()
    sealed = _closed(link2.dialer)
    for closed in (forged, sealed):
        assert closed.reason.isprintable() and "forged record" in closed.reason
        assert "\\x0a" in closed.reason and "\\x1b" in closed.reason


def test_printable_is_idempotent_and_bounded() -> None:
    once = printable(HOSTILE * 50)
    assert printable(once) == once and once.isprintable() and len(once) <= 257


def test_listener_logs_a_refusal_on_one_line(
    caplog: pytest.LogCaptureFixture, arun: Callable[[Any], Any]
) -> None:
    from umbranet.sdk.listener import Listener

    async def main() -> None:
        listener = Listener(object(), "svc\nINFO fake")  # type: ignore[arg-type]
        with caplog.at_level(logging.WARNING, logger="umbranet.sdk"):
            listener.refused("peer_not_authorized", HOSTILE)
        (record,) = caplog.records
        assert "\n" not in record.getMessage() and "\x1b" not in record.getMessage()
        assert listener.counters == {"peer_not_authorized": 1}

    arun(main())


def test_local_credentials_never_show_the_noise_private_key_in_their_repr() -> None:
    text = repr(_credentials(ALICE))
    key = ALICE.noise_private_key
    assert repr(key) not in text and key.hex() not in text
