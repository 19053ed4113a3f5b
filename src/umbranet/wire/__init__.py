"""The data-plane wire format: frame header, frame types, error codes and control payloads.

Pure code, no IO. The byte layouts are drawn in `docs/wire.md` and at the constants.
"""

from umbranet.wire.codes import ErrorCode
from umbranet.wire.control import ControlPayload, decode_control, encode_control
from umbranet.wire.frames import (
    HEADER_SIZE,
    MAX_DATA_PAYLOAD,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Flag,
    Frame,
    FrameDecoder,
    FrameType,
    WireError,
    encode_frame,
    encode_header,
)

__all__ = [
    "HEADER_SIZE",
    "MAX_DATA_PAYLOAD",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "ControlPayload",
    "ErrorCode",
    "Flag",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "WireError",
    "decode_control",
    "encode_control",
    "encode_frame",
    "encode_header",
]
