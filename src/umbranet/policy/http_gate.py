"""The hosting endpoint's HTTP gate: find every request head in a byte stream and judge it.

Only the hosting endpoint sees request lines, so it enforces the policy's ``http`` rules. The
gate sits between the decrypted stream and the application: bytes reach the application only
after the head of the request they belong to was allowed. It frames HTTP/1.1 requests itself
(request line, headers, then a body by Content-Length or chunked encoding), so every request on
a keep-alive connection is judged, not just the first.

Sans-IO: `HttpGate.feed(data)` returns the bytes that may pass and, when a request is refused
or the stream is not valid HTTP/1.1, the `GateStop` to answer with (403 with the policy's
reason, 400, 431). After a stop the gate passes nothing more.

Ambiguous framing is refused rather than guessed (both Content-Length and Transfer-Encoding,
conflicting lengths, a transfer coding other than chunked last): an application behind the gate
must never see a request the gate framed differently. After a CONNECT or an Upgrade request the
gate passes the rest of the stream unexamined: it is no longer HTTP, and the request that asked
for it was judged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from urllib.parse import urlsplit

from umbranet.policy.verdict import Verdict

__all__ = ["MAX_HEAD", "GateResult", "GateStop", "HttpGate", "render_stop"]

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VERSION = re.compile(rb"^HTTP/1\.[01]$")
_CHUNK_SIZE = re.compile(rb"^[0-9A-Fa-f]{1,16}$")

Decide = Callable[[str, str], Verdict]
"""(method, path) -> verdict; the caller binds the dialer's identity and the service's rules."""


@dataclass(frozen=True, slots=True)
class GateStop:
    """Why the gate stopped the stream, and the HTTP status to answer with."""

    status: int
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class GateResult:
    passed: bytes
    stop: GateStop | None = None


class _State(Enum):
    HEAD = auto()
    BODY = auto()
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_CRLF = auto()
    TRAILERS = auto()
    TUNNEL = auto()
    STOPPED = auto()


class HttpGate:
    """One connection's gate; `requests` counts the heads judged so far."""

    def __init__(self, decide: Decide, max_head: int = MAX_HEAD) -> None:
        self._decide = decide
        self._max_head = max_head
        self._state = _State.HEAD
        self._buffer = bytearray()
        self._remaining = 0
        self._after_body = _State.HEAD
        self.requests = 0

    def feed(self, data: bytes) -> GateResult:
        """Take the next bytes from the dialer; return what may reach the application."""
        if self._state is _State.STOPPED:
            return GateResult(b"")
        self._buffer += data
        passed = bytearray()
        while self._buffer:
            outcome = self._step(passed)
            if isinstance(outcome, GateStop):
                self._state = _State.STOPPED
                self._buffer.clear()
                return GateResult(bytes(passed), outcome)
            if not outcome:
                break  # the buffer ends inside a line or head the gate must see whole
        return GateResult(bytes(passed))

    # -- the framing state machine: each step returns True (progress), False (needs more
    # -- input) or the stop ------------------------------------------------------------------

    def _step(self, passed: bytearray) -> GateStop | bool:
        state = self._state
        if state is _State.HEAD:
            return self._head(passed)
        if state is _State.TUNNEL:
            passed += self._buffer
            self._buffer.clear()
            return True
        if state in (_State.BODY, _State.CHUNK_DATA):
            take = min(self._remaining, len(self._buffer))
            passed += self._buffer[:take]
            del self._buffer[:take]
            self._remaining -= take
            if self._remaining == 0:
                self._state = self._after_body
            return True
        if state is _State.CHUNK_CRLF:
            return self._chunk_crlf(passed)
        if state is _State.CHUNK_SIZE:
            return self._chunk_size(passed)
        return self._trailers(passed)

    def _head(self, passed: bytearray) -> GateStop | bool:
        blank = len(self._buffer) - len(self._buffer.lstrip(b"\r\n"))
        if blank:
            del self._buffer[:blank]  # blank lines between requests are allowed (RFC 9112)
            return bool(self._buffer)
        found = _HEAD_END.search(self._buffer)
        if found is None:
            if len(self._buffer) > self._max_head:
                return GateStop(431, "http_head_too_large", "request head too large")
            return False
        end = found.end()
        if end > self._max_head:
            return GateStop(431, "http_head_too_large", "request head too large")
        head = bytes(self._buffer[:end])
        parsed = _parse_head(head)
        if isinstance(parsed, GateStop):
            return parsed
        method, path, framing = parsed
        self.requests += 1
        verdict = self._decide(method, path)
        if not verdict.allowed:
            return GateStop(403, "http_denied", verdict.reason)
        passed += head
        del self._buffer[:end]
        kind, length = framing
        if kind == "tunnel":
            self._state = _State.TUNNEL
        elif kind == "chunked":
            self._state = _State.CHUNK_SIZE
        elif length:
            self._state, self._remaining, self._after_body = _State.BODY, length, _State.HEAD
        return True

    def _chunk_size(self, passed: bytearray) -> GateStop | bool:
        line_end = self._buffer.find(b"\n")
        if line_end < 0:
            if len(self._buffer) > MAX_CHUNK_LINE:
                return GateStop(400, "http_malformed", "chunk size line too long")
            return False
        line = bytes(self._buffer[: line_end + 1])
        size_text = line.rstrip(b"\r\n").split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.match(size_text):
            return GateStop(400, "http_malformed", "malformed chunk size")
        size = int(size_text, 16)
        passed += line
        del self._buffer[: line_end + 1]
        if size == 0:
            self._state = _State.TRAILERS
        else:
            self._state, self._remaining = _State.CHUNK_DATA, size
            self._after_body = _State.CHUNK_CRLF
        return True

    def _chunk_crlf(self, passed: bytearray) -> GateStop | bool:
        if self._buffer == b"\r":
            return False
        for ending in (b"\r\n", b"\n"):
            if self._buffer.startswith(ending):
                passed += ending
                del self._buffer[: len(ending)]
                self._state = _State.CHUNK_SIZE
                return True
        return GateStop(400, "http_malformed", "chunk data not followed by CRLF")

    def _trailers(self, passed: bytearray) -> GateStop | bool:
        line_end = self._buffer.find(b"\n")
        if line_end < 0:
            if len(self._buffer) > self._max_head:
                return GateStop(431, "http_head_too_large", "chunked trailers too large")
            return False
        line = bytes(self._buffer[: line_end + 1])
        passed += line
        del self._buffer[: line_end + 1]
        if line in (b"\r\n", b"\n"):
            self._state = _State.HEAD
        return True


Framing = tuple[str, int]  # ("length", n) | ("chunked", 0) | ("tunnel", 0)


def _parse_head(head: bytes) -> tuple[str, str, Framing] | GateStop:
    """Method, path and body framing of one request head (ending with the blank line)."""
    lines = re.split(rb"\r?\n", head.rstrip(b"\r\n"))
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _VERSION.match(parts[2]):
        return GateStop(400, "http_malformed", "malformed request line")
    method = parts[0].decode("ascii")
    path = _path_of(parts[1], method)
    if path is None:
        return GateStop(400, "http_malformed", "malformed request target")
    lengths: set[int] = set()
    codings: list[bytes] = []
    upgrade = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            return GateStop(400, "http_malformed", "malformed header line")
        key, value = name.lower(), value.strip()
        if key == b"content-length":
            for item in value.split(b","):
                if not item.strip().isdigit() or len(item.strip()) > 18:
                    return GateStop(400, "http_malformed", "malformed Content-Length")
                lengths.add(int(item))
        elif key == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
        elif key == b"upgrade":
            upgrade = True
    if len(lengths) > 1 or (lengths and codings):
        return GateStop(400, "http_malformed", "ambiguous request body length")
    if codings and codings[-1] != b"chunked":
        return GateStop(400, "http_malformed", "request body length unknown")
    if method == "CONNECT" or upgrade:
        return method, path, ("tunnel", 0)
    if codings:
        return method, path, ("chunked", 0)
    return method, path, ("length", lengths.pop() if lengths else 0)


def _path_of(target: bytes, method: str) -> str | None:
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text or any(c.isspace() or ord(c) < 0x21 for c in text):
        return None
    if method == "CONNECT" or text == "*":
        return "/"  # authority-form and asterisk-form carry no path; rules see the root
    if not text.startswith("/"):
        split = urlsplit(text)
        if split.scheme not in ("http", "https") or not split.netloc:
            return None
        return split.path or "/"
    return text.split("?", 1)[0].split("#", 1)[0]


def render_stop(stop: GateStop) -> bytes:
    """The HTTP response for a stop: status, the reason as text, and the connection closed."""
    phrase = {400: "Bad Request", 403: "Forbidden", 431: "Request Header Fields Too Large"}
    body = f"{stop.reason}\n".encode()
    reason_header = stop.reason.encode("ascii", "replace")[:512].replace(b"\r", b" ")
    reason_header = reason_header.replace(b"\n", b" ")
    return b"".join(
        [
            f"HTTP/1.1 {stop.status} {phrase.get(stop.status, 'Error')}\r\n".encode(),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            f"Content-Length: {len(body)}\r\n".encode(),
            b"Connection: close\r\n",
            b"X-Umbra-Code: " + stop.code.encode() + b"\r\n",
            b"X-Umbra-Reason: " + reason_header + b"\r\n\r\n",
            body,
        ]
    )
