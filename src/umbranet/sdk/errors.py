"""Exceptions the SDK raises to applications, each with a stable code and a reason."""

from __future__ import annotations

from umbranet.wire import ErrorCode


class UmbraError(Exception):
    """Base of every SDK error: `code` is the machine code, `reason` the human text."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class DialError(UmbraError, ConnectionRefusedError):
    """A dial was refused (by the controller, a router or the host) or timed out."""


class BindError(UmbraError):
    """A router refused to let this endpoint host a service."""


class StreamReset(UmbraError, ConnectionResetError):
    """The stream ended abnormally: the peer, a router or this side reset it."""

    @classmethod
    def from_code(cls, code: ErrorCode, reason: str) -> StreamReset:
        return cls(code.code, reason)
