"""Frame codec: round trips at any chunking, and every malformed stream is a WireError."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.wire import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameType,
    WireError,
    decode_control,
    encode_control,
    encode_frame,
)
from umbranet.wire.control import DecodedFrame, decode_error, encode_error, frame_control
from umbranet.wire.frames import encode_header

frame_types = st.sampled_from(list(FrameType))
frames = st.tuples(
    frame_types,
    st.integers(0, 2**32 - 1),
    st.binary(max_size=3000),
    st.integers(0, 255),
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for point in [*points, len(data)]:
        out.append(data[last:point])
        last = point
    return out


@settings(max_examples=200)
@given(st.lists(frames, max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
def test_frames_survive_any_chunking(
    items: list[tuple[FrameType, int, bytes, int]], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(t, c, p, f) for t, c, p, f in items)
    decoder = FrameDecoder(buffer_size=1024)
    got = []
    for chunk in _chunks(stream, cuts):
        got.extend((f.type, f.circuit, bytes(f.payload), f.flags) for f in decoder.feed(chunk))
    assert got == [(int(t), c, p, f) for t, c, p, f in items]
    assert decoder.buffered == 0


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_garbage_raises_only_wire_error(garbage: bytes) -> None:
    decoder = FrameDecoder()
    try:
        decoder.feed(garbage)
    except WireError as exc:
        assert exc.code in (ErrorCode.PROTOCOL_ERROR, ErrorCode.FRAME_TOO_LARGE)


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    decoder = FrameDecoder()
    with pytest.raises(WireError) as info:
        decoder.feed(encode_header(FrameType.DATA, 1, MAX_PAYLOAD + 1))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_unknown_type_and_reserved_bits_are_protocol_errors() -> None:
    for raw in (b"\x7f" + bytes(HEADER_SIZE - 1), b"\x24\x00\x00\x01" + bytes(8)):
        with pytest.raises(WireError) as info:
            FrameDecoder().feed(raw)
        assert info.value.code is ErrorCode.PROTOCOL_ERROR


def test_large_frames_reassemble_across_reads() -> None:
    payload = bytes(range(256)) * 300  # 76,800 bytes: larger than the minimum free space
    wire = encode_frame(FrameType.DATA, 7, payload) * 3
    decoder = FrameDecoder(buffer_size=4096)
    got = []
    for i in range(0, len(wire), 1000):
        got.extend(bytes(f.payload) for f in decoder.feed(wire[i : i + 1000]))
    assert got == [payload] * 3


@given(
    st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=20), max_size=8),
    st.binary(max_size=200),
)
def test_control_round_trip(fields: dict[str, object], blob: bytes) -> None:
    decoded = decode_control(encode_control(fields, blob))
    assert decoded.fields == fields
    assert decoded.blob == blob


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_control_garbage_is_bad_control_payload(garbage: bytes) -> None:
    try:
        decode_control(garbage)
    except WireError as exc:
        assert exc.code is ErrorCode.BAD_CONTROL_PAYLOAD


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=300)
@given(
    _JSON_VALUES,
    st.sampled_from(["", " ", "\n", "\t \r\n"]),
    st.sampled_from(["", " ", "\n", " x", ",", "}"]),
    st.sampled_from([None, 1]),
)
def test_control_json_is_accepted_and_refused_as_json_loads_does(
    value: object, before: str, after: str, indent: int | None
) -> None:
    # The decoder skips json.loads's whitespace scans when it can: what it accepts must not
    # change (whitespace around the object is valid JSON; anything after it is not).
    text = (before + json.dumps(value, indent=indent) + after).encode()
    try:
        expected: object = json.loads(text.decode())
    except ValueError:
        expected = None
    payload = struct.pack("!H", len(text)) + text
    if not isinstance(expected, dict):
        with pytest.raises(WireError):
            decode_control(payload)
    else:
        assert decode_control(payload).fields == expected


def test_error_payloads_round_trip_and_tolerate_garbage() -> None:
    assert decode_error(encode_error(ErrorCode.NO_TERMINATOR, "no host")) == (
        ErrorCode.NO_TERMINATOR,
        "no host",
    )
    code, reason = decode_error(b"\xff\xff\xff")
    assert code is ErrorCode.PROTOCOL_ERROR
    assert "malformed" in reason
    assert ErrorCode.from_wire(60000) is ErrorCode.PROTOCOL_ERROR


def test_feed_of_more_than_the_buffer_keeps_every_payload_intact() -> None:
    # Earlier frames' views must be copied before the buffer is compacted for the next chunk.
    payloads = [bytes([i]) * 65_552 for i in range(6)]  # 393 KB: beyond the 256 KiB buffer
    data = b"".join(encode_frame(FrameType.DATA, 1, p) for p in payloads)
    frames = FrameDecoder().feed(data)
    assert [bytes(f.payload) for f in frames] == payloads


def test_a_decoded_frame_hands_on_its_payload_decoded_once() -> None:
    # A host reads a CONNECT for its binding, then its accept reads it again: one decode.
    payload = encode_control({"binding": 1, "window": 65536}, b"blob")
    frame = Frame(FrameType.CONNECT, 0, 2, payload)
    control = decode_control(frame.payload)
    handed = DecodedFrame(frame, control)
    assert (handed.type, handed.flags, handed.circuit, handed.payload) == (
        FrameType.CONNECT,
        0,
        2,
        payload,
    )
    assert frame_control(handed) is control
    assert frame_control(frame) == control  # a plain frame is decoded
