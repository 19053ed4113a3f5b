"""HTTP/1.1 message framing shared by both directions of the HTTP gate.

`parse_request_head` and `parse_response_head` read one head (ending with its blank line) and
say how the body that follows is framed; `Body` then walks that body through a buffer,
chunk by chunk, so the gate knows exactly where each message ends. Pure: no IO, no clock.

Ambiguous framing is refused rather than guessed (both Content-Length and Transfer-Encoding,
conflicting lengths, a transfer coding other than chunked last on a request): a program behind
the gate must never see a message the gate framed differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto
from urllib.parse import urlsplit

__all__ = [
    "MAX_CHUNK_LINE",
    "Body",
    "FramingError",
    "RequestHead",
    "ResponseHead",
    "parse_request_head",
    "parse_response_head",
]

MAX_CHUNK_LINE = 4096
HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VERSION = re.compile(rb"^HTTP/1\.[01]$")
_STATUS = re.compile(rb"^[1-9][0-9]{2}$")
_CHUNK_SIZE = re.compile(rb"^[0-9A-Fa-f]{1,16}$")


@dataclass(frozen=True, slots=True)
class FramingError:
    """Why bytes are not a message the gate can frame; `status` is the HTTP answer."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    path: str
    chunked: bool
    length: int
    upgrade: tuple[str, ...]  # protocol names offered in Upgrade, lowercased, without versions


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    chunked: bool
    length: int | None  # None: no Content-Length
    until_close: bool  # a coding other than chunked: the body ends when the connection does
    upgrade: tuple[str, ...]


def _headers(lines: list[bytes]) -> dict[bytes, list[bytes]] | FramingError:
    found: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            return FramingError(400, "malformed header line")
        found.setdefault(name.lower(), []).append(value.strip())
    return found


def _framing(headers: dict[bytes, list[bytes]]) -> tuple[set[int], list[bytes]] | FramingError:
    lengths: set[int] = set()
    for value in headers.get(b"content-length", []):
        for item in value.split(b","):
            if not item.strip().isdigit() or len(item.strip()) > 18:
                return FramingError(400, "malformed Content-Length")
            lengths.add(int(item))
    codings = [
        c.strip().lower()
        for value in headers.get(b"transfer-encoding", [])
        for c in value.split(b",")
        if c.strip()
    ]
    if len(lengths) > 1 or (lengths and codings):
        return FramingError(400, "ambiguous body length")
    return lengths, codings


def _protocols(headers: dict[bytes, list[bytes]]) -> tuple[str, ...]:
    names = []
    for value in headers.get(b"upgrade", []):
        for item in value.split(b","):
            name = item.strip().split(b"/", 1)[0].lower()
            names.append(name.decode("ascii", "replace") or "?")
    return tuple(names)


def parse_request_head(head: bytes) -> RequestHead | FramingError:
    """Method, path and body framing of one request head (ending with the blank line)."""
    lines = re.split(rb"\r?\n", head.rstrip(b"\r\n"))
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _VERSION.match(parts[2]):
        return FramingError(400, "malformed request line")
    method = parts[0].decode("ascii")
    path = _path_of(parts[1], method)
    if path is None:
        return FramingError(400, "malformed request target")
    headers = _headers(lines[1:])
    if isinstance(headers, FramingError):
        return headers
    framing = _framing(headers)
    if isinstance(framing, FramingError):
        reason = framing.reason.replace("ambiguous body", "ambiguous request body")
        return FramingError(400, reason)
    lengths, codings = framing
    if codings and codings[-1] != b"chunked":
        return FramingError(400, "request body length unknown")
    length = lengths.pop() if lengths else 0
    return RequestHead(method, path, bool(codings), length, _protocols(headers))


def parse_response_head(head: bytes) -> ResponseHead | FramingError:
    """Status and body framing of one response head (ending with the blank line)."""
    lines = re.split(rb"\r?\n", head.rstrip(b"\r\n"))
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not _VERSION.match(parts[0]) or not _STATUS.match(parts[1]):
        return FramingError(502, "malformed status line")
    headers = _headers(lines[1:])
    if isinstance(headers, FramingError):
        return headers
    framing = _framing(headers)
    if isinstance(framing, FramingError):
        return framing
    lengths, codings = framing
    chunked = bool(codings) and codings[-1] == b"chunked"
    return ResponseHead(
        int(parts[1]),
        chunked,
        lengths.pop() if lengths else None,
        bool(codings) and not chunked,
        _protocols(headers),
    )


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


class _Part(Enum):
    LENGTH = auto()
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_CRLF = auto()
    TRAILERS = auto()
    UNTIL_CLOSE = auto()
    DONE = auto()


class Body:
    """Walks one message body through a buffer; `done` once its last byte was taken.

    `step(buffer, out)` moves what it can from the front of `buffer` to `out` and returns
    True (progress), False (needs more bytes) or a FramingError.
    """

    def __init__(self, *, chunked: bool, length: int, until_close: bool = False) -> None:
        self._remaining = length
        if until_close:
            self._part = _Part.UNTIL_CLOSE
        elif chunked:
            self._part = _Part.CHUNK_SIZE
        else:
            self._part = _Part.LENGTH if length else _Part.DONE

    @property
    def done(self) -> bool:
        return self._part is _Part.DONE

    def step(self, buffer: bytearray, out: bytearray, max_trailers: int) -> FramingError | bool:
        part = self._part
        if part is _Part.DONE or not buffer:
            return False
        if part is _Part.UNTIL_CLOSE:
            out += buffer
            buffer.clear()
            return True
        if part in (_Part.LENGTH, _Part.CHUNK_DATA):
            take = min(self._remaining, len(buffer))
            out += buffer[:take]
            del buffer[:take]
            self._remaining -= take
            if self._remaining == 0:
                self._part = _Part.DONE if part is _Part.LENGTH else _Part.CHUNK_CRLF
            return True
        if part is _Part.CHUNK_CRLF:
            if buffer == b"\r":
                return False
            for ending in (b"\r\n", b"\n"):
                if buffer.startswith(ending):
                    out += ending
                    del buffer[: len(ending)]
                    self._part = _Part.CHUNK_SIZE
                    return True
            return FramingError(400, "chunk data not followed by CRLF")
        line_end = buffer.find(b"\n")
        if line_end < 0:
            if part is _Part.CHUNK_SIZE and len(buffer) > MAX_CHUNK_LINE:
                return FramingError(400, "chunk size line too long")
            if part is _Part.TRAILERS and len(buffer) > max_trailers:
                return FramingError(431, "chunked trailers too large")
            return False
        line = bytes(buffer[: line_end + 1])
        if part is _Part.CHUNK_SIZE:
            size_text = line.rstrip(b"\r\n").split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.match(size_text):
                return FramingError(400, "malformed chunk size")
            size = int(size_text, 16)
            self._part, self._remaining = (
                (_Part.TRAILERS, 0) if size == 0 else (_Part.CHUNK_DATA, size)
            )
        elif line in (b"\r\n", b"\n"):
            self._part = _Part.DONE
        out += line
        del buffer[: line_end + 1]
        return True
