"""Control payloads: a small JSON object plus an optional binary blob.

    +-------------------+----------------------------+------------------------+
    | json length (u16) | JSON object, UTF-8         | blob (rest of payload) |
    +-------------------+----------------------------+------------------------+

Control frames are few (about three per dial or bind), so JSON's cost is small and its
readability worth it; one encoder and one decoder are reused so a payload costs a few µs.
The blob carries Noise handshake messages without base64.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from umbranet.wire.codes import ErrorCode
from umbranet.wire.frames import Frame, WireError

_LEN = struct.Struct("!H")
MAX_JSON = 16 * 1024
# Made once: `json.dumps` with separators builds a new encoder per call, which cost more
# than the encoding (~8 µs vs ~4 µs for a DIAL; a dial encodes three payloads).
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class ControlPayload:
    """A decoded control payload."""

    fields: dict[str, Any]
    blob: bytes = b""

    def str_field(self, name: str, max_len: int = 8192) -> str:
        """A required string field, or WireError(BAD_CONTROL_PAYLOAD)."""
        value = self.fields.get(name)
        if not isinstance(value, str) or len(value) > max_len:
            raise WireError(ErrorCode.BAD_CONTROL_PAYLOAD, f"field {name!r} must be a string")
        return value

    def int_field(self, name: str, low: int = 0, high: int = 2**32 - 1) -> int:
        """A required integer field within [low, high], or WireError(BAD_CONTROL_PAYLOAD)."""
        value = self.fields.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise WireError(
                ErrorCode.BAD_CONTROL_PAYLOAD, f"field {name!r} must be an integer in range"
            )
        return value


def encode_control(fields: dict[str, Any], blob: bytes = b"") -> bytes:
    """Encode fields (JSON-serialisable) and a blob."""
    body = _ENCODER.encode(fields).encode()
    if len(body) > MAX_JSON:
        raise ValueError(f"control JSON of {len(body)} bytes exceeds {MAX_JSON}")
    return _LEN.pack(len(body)) + body + blob


def decode_control(payload: bytes | memoryview) -> ControlPayload:
    """Decode a control payload; anything malformed raises WireError(BAD_CONTROL_PAYLOAD)."""
    if len(payload) < _LEN.size:
        raise WireError(ErrorCode.BAD_CONTROL_PAYLOAD, "control payload too short")
    (size,) = _LEN.unpack_from(payload, 0)
    end = _LEN.size + size
    if size > MAX_JSON or end > len(payload):
        raise WireError(ErrorCode.BAD_CONTROL_PAYLOAD, "control JSON length out of range")
    try:
        fields = _loads(bytes(payload[_LEN.size : end]).decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(ErrorCode.BAD_CONTROL_PAYLOAD, "control JSON does not parse") from exc
    if not isinstance(fields, dict):
        raise WireError(ErrorCode.BAD_CONTROL_PAYLOAD, "control JSON must be an object")
    return ControlPayload(fields, bytes(payload[end:]))


class DecodedFrame(Frame):
    """A control frame whose first reader decoded its payload, handed on with the result:
    a host's CONNECT is read for its binding, then by the accept that binding runs."""

    __slots__ = ("control",)

    def __init__(self, frame: Frame, control: ControlPayload) -> None:
        super().__init__(frame.type, frame.flags, frame.circuit, frame.payload)
        self.control = control


def frame_control(frame: Frame) -> ControlPayload:
    """`decode_control(frame.payload)`, or what a `DecodedFrame` carries already."""
    if type(frame) is DecodedFrame:
        return frame.control
    return decode_control(frame.payload)


def _loads(text: str) -> Any:
    """`json.loads`, without its two whitespace scans when there is no whitespace around
    the value (our encoder writes none); anything else takes `json.loads` itself, so what
    is accepted and refused is exactly what it accepts and refuses."""
    try:
        value, end = _DECODER.raw_decode(text)
    except ValueError:
        return json.loads(text)  # leading whitespace, or the error json.loads raises too
    return value if end == len(text) else json.loads(text)


def encode_error(code: ErrorCode, reason: str) -> bytes:
    """The payload of RESET, GOAWAY and BIND_ERR."""
    return encode_control({"code": int(code), "reason": reason[:512]})


def decode_error(payload: bytes | memoryview) -> tuple[ErrorCode, str]:
    """Decode a RESET/GOAWAY/BIND_ERR payload; a malformed one is itself a protocol error."""
    try:
        ctl = decode_control(payload)
        return ErrorCode.from_wire(ctl.int_field("code", 0, 65535)), ctl.str_field("reason", 512)
    except WireError as exc:
        return ErrorCode.PROTOCOL_ERROR, f"malformed error payload ({exc.reason})"
