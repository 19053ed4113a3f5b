"""Peer-supplied text made safe to log and show: control characters escaped, length bounded.

Reasons in RESET, GOAWAY and sealed aborts, and service names in frames, come from the
network. Written raw into a log line, a newline forges a second record and an escape sequence
rewrites a terminal; so every such string passes through `printable` before it is logged or
handed to an application.
"""

from __future__ import annotations

__all__ = ["printable"]

_LIMIT = 256


def printable(text: object, limit: int = _LIMIT) -> str:
    """`text` with every non-printable character escaped, cut at `limit`.

    Backslashes are kept as they are, so the function is idempotent: a reason escaped where
    it entered (the circuit) is not mangled again where it is logged.
    """
    raw = text if isinstance(text, str) else str(text)
    if not raw.isprintable():
        raw = "".join(_escape(c) for c in raw)
    return raw if len(raw) <= limit else raw[:limit] + "…"


def _escape(char: str) -> str:
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
