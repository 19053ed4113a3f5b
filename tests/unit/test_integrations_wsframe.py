"""WebSocket frames: what a client sends comes out whole however it is cut and fragmented,
and every protocol violation is a close code, never an exception of another kind."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbranet.integrations import wsframe
from umbranet.integrations.wsframe import FrameReader, Message, Ping, WsProtocolError

MASK = b"\x11\x22\x33\x44"


def _frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = MASK) -> bytes:
    data = wsframe.encode(opcode, payload, mask)
    return data if fin else bytes([data[0] & 0x7F]) + data[1:]


def test_the_accept_key_is_the_rfcs_example() -> None:
    assert wsframe.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


messages = st.lists(
    st.one_of(st.text(max_size=300).map(lambda t: ("text", t)), st.binary(max_size=70_000)),
    max_size=5,
)


@given(messages, st.integers(1, 5), st.integers(1, 9000), st.binary(min_size=4, max_size=4))
def test_messages_survive_any_fragmentation_and_cutting(
    sent: list[object], pieces: int, cut: int, mask: bytes
) -> None:
    wire = b""
    expected = []
    for item in sent:
        if isinstance(item, tuple):
            payload, opcode = item[1].encode(), wsframe.OP_TEXT
            expected.append(Message(text=item[1]))
        else:
            assert isinstance(item, bytes)
            payload, opcode = item, wsframe.OP_BINARY
            expected.append(Message(data=item))
        size = max(1, len(payload) // pieces)
        chunks = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for n, chunk in enumerate(chunks):
            last = n == len(chunks) - 1
            wire += _frame(opcode if n == 0 else 0, chunk, fin=last, mask=mask)
            if n == 0 and not last:
                wire += _frame(wsframe.OP_PING, b"mid", mask=mask)  # control frames interleave
                expected.append(Ping(b"mid"))
    reader = FrameReader(max_message=1 << 20)
    got = []
    for i in range(0, len(wire), cut):
        got += reader.feed(wire[i : i + cut])
    assert sorted(map(repr, got)) == sorted(map(repr, expected))
    assert [e for e in got if isinstance(e, Message)] == [
        e for e in expected if isinstance(e, Message)
    ]


def test_a_close_frame_carries_its_code_and_reason() -> None:
    reader = FrameReader()
    (close,) = reader.feed(_frame(wsframe.OP_CLOSE, wsframe.close_payload(4001, "bye")))
    assert close == wsframe.Close(4001, "bye")
    assert reader.feed(_frame(wsframe.OP_CLOSE, b"")) == [wsframe.Close(1005, "")]


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (wsframe.encode(wsframe.OP_TEXT, b"x"), 1002),  # unmasked
        (bytes([0xC1]) + _frame(wsframe.OP_TEXT, b"x")[1:], 1002),  # RSV1 without extension
        (_frame(0x3, b"x"), 1002),  # reserved opcode
        (_frame(wsframe.OP_PING, b"x" * 126), 1002),  # long control frame
        (_frame(wsframe.OP_PING, b"x", fin=False), 1002),  # fragmented control frame
        (_frame(0x0, b"x"), 1002),  # continuation of nothing
        (_frame(wsframe.OP_TEXT, b"a", fin=False) + _frame(wsframe.OP_TEXT, b"b"), 1002),
        (_frame(wsframe.OP_TEXT, b"\xff\xfe"), 1007),
        (_frame(wsframe.OP_CLOSE, b"\x03"), 1002),
        (_frame(wsframe.OP_CLOSE, struct.pack("!H", 1005)), 1002),
        (_frame(wsframe.OP_BINARY, b"x" * 2000), 1009),
    ],
)
def test_violations_name_their_close_code(wire: bytes, code: int) -> None:
    with pytest.raises(WsProtocolError) as caught:
        FrameReader(max_message=1000).feed(wire)
    assert caught.value.code == code


@given(st.binary(max_size=200))
def test_any_bytes_give_events_or_a_protocol_error(data: bytes) -> None:
    try:
        FrameReader(max_message=1000).feed(data)
    except WsProtocolError as exc:
        assert exc.code in (1002, 1007, 1009)
