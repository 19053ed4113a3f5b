"""Log-safe rendering of strings that come from peers (paths, names, reasons).

A value written into a log line must stay on that line: a service name or URL path holding
a newline could otherwise forge a second, believable log entry. `safe` renders control
characters, backslashes and non-ASCII as Python escapes and bounds the length.
"""

from __future__ import annotations

__all__ = ["MAX_LOGGED", "safe"]

MAX_LOGGED = 512
"""Characters of one value kept in a log line; the rest is marked as cut."""


def safe(value: object) -> str:
    """`value` as one printable ASCII token-ish string (never containing a newline)."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > MAX_LOGGED
    escaped = text[:MAX_LOGGED].encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if 0x20 <= ord(c) < 0x7F else f"\\x{ord(c):02x}" for c in escaped)
    return escaped + ("...(cut)" if cut else "")
