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
    """The stream ended abnormally: the peer, a router or this side reset it.

    `authenticated` tells who is speaking: True when the code and reason are this side's own
    or came sealed from the peer; False when they came in a RESET frame that any router on
    the path could have sent (or forged), so they are a claim, not a fact. Such a reset is
    an error even when it claims "no_error": only the peer's sealed FIN ends a stream
    cleanly.
    """

    def __init__(self, code: str, reason: str, authenticated: bool = True) -> None:
        super().__init__(code, reason if authenticated else f"{reason} (unauthenticated)")
        self.reason = reason
        self.authenticated = authenticated

    @classmethod
    def from_code(cls, code: ErrorCode, reason: str, authenticated: bool = True) -> StreamReset:
        return cls(code.code, reason, authenticated)
