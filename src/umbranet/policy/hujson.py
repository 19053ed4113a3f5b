"""HuJSON: JSON for humans (``//`` and ``/* */`` comments, trailing commas), parsed by hand.

Policy files are written by people, so they want comments and forgiving commas; and when a
document is refused, the person wants the line and column. The standard `json` module gives
neither, so this is a small recursive-descent parser with two extras:

- every error is a `PolicyError("policy_syntax", reason, line, column)`, never another
  exception type, whatever the input (a hypothesis test feeds it random text);
- `parse` records where every value (and every object key) starts, so later stages (schema,
  references, tests) can point at the token they refuse (`Document.where`).

Grammar = RFC 8259 JSON plus comments wherever whitespace may appear and one optional comma
before ``]`` or ``}``. Refused on purpose, because in a policy they are mistakes, not data:
duplicate object keys, unpaired UTF-16 surrogate escapes, nesting deeper than `MAX_DEPTH`,
numbers longer than `MAX_NUMBER` characters. A leading byte-order mark is skipped.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

from umbranet.policy.errors import PolicyError

__all__ = ["MAX_DEPTH", "MAX_NUMBER", "Document", "Path", "loads", "parse"]

MAX_DEPTH = 64
"""Deepest nesting accepted; a policy is a few levels deep, so this only stops abuse."""

MAX_NUMBER = 64
"""Longest number literal accepted (Python refuses to parse huge integers anyway)."""

Path = tuple[str | int, ...]
"""Where a value sits in the document: object keys and array indexes from the root."""


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed document: the value, plus where each value and key starts in the text."""

    value: Any
    text: str
    values_at: dict[Path, int] = field(repr=False)
    keys_at: dict[Path, int] = field(repr=False)
    _line_starts: list[int] = field(repr=False, compare=False)

    def where(self, path: Path, *, key: bool = False) -> tuple[int, int] | None:
        """1-based (line, column) of the value at ``path`` (or of its key, with ``key``).

        Falls back to the nearest enclosing value, so a fault about a missing field points at
        the object that lacks it.
        """
        if key and path in self.keys_at:
            return self.position(self.keys_at[path])
        probe = path
        while True:
            offset = self.values_at.get(probe)
            if offset is not None:
                return self.position(offset)
            if not probe:
                return None
            probe = probe[:-1]

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1


def loads(text: str) -> Any:
    """Parse HuJSON text into Python values (dict, list, str, int, float, bool, None)."""
    return parse(text).value


def parse(text: str) -> Document:
    """Parse HuJSON text, remembering where every value starts; raises only `PolicyError`."""
    if not isinstance(text, str):
        raise PolicyError("policy_syntax", f"policy text must be str, not {type(text).__name__}")
    parser = _Parser(text)
    value = parser.document()
    return Document(value, text, parser.values_at, parser.keys_at, parser.line_starts())


# Whitespace and comments, in one regex: JSON's four whitespace characters, line comments up
# to (not including) the newline, and terminated block comments. An unterminated ``/*`` is not
# matched here and is reported by `_Parser.skip`.
_SKIP = re.compile(r"(?:[ \t\n\r]+|//[^\n]*|/\*(?:[^*]|\*(?!/))*\*/)*")
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]+')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:(\.[0-9]+)?([eE][+-]?[0-9]+)?)")
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS: tuple[tuple[str, Any], ...] = (("true", True), ("false", False), ("null", None))


class _Parser:
    """One pass over the text; ``pos`` is the index of the next unread character."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 1 if text.startswith("\ufeff") else 0
        self.values_at: dict[Path, int] = {}
        self.keys_at: dict[Path, int] = {}
        self._lines: list[int] | None = None

    def line_starts(self) -> list[int]:
        if self._lines is None:
            starts = [0]
            find = self.text.find
            index = find("\n")
            while index != -1:
                starts.append(index + 1)
                index = find("\n", index + 1)
            self._lines = starts
        return self._lines

    def fail(self, reason: str, offset: int | None = None) -> PolicyError:
        offset = self.pos if offset is None else offset
        starts = self.line_starts()
        line = bisect.bisect_right(starts, offset)
        return PolicyError("policy_syntax", reason, line, offset - starts[line - 1] + 1)

    def describe(self) -> str:
        """The character at ``pos``, quoted for an error message."""
        if self.pos >= len(self.text):
            return "end of input"
        return repr(self.text[self.pos])

    def skip(self) -> None:
        match = _SKIP.match(self.text, self.pos)
        self.pos = match.end() if match else self.pos
        if self.text.startswith("/*", self.pos):
            raise self.fail("unterminated /* comment")

    def document(self) -> Any:
        self.skip()
        if self.pos >= len(self.text):
            raise self.fail("empty document: expected a value")
        value = self.value((), 0)
        self.skip()
        if self.pos < len(self.text):
            raise self.fail(f"unexpected {self.describe()} after the document's value")
        return value

    def value(self, path: Path, depth: int) -> Any:
        """Parse one value at ``pos`` (whitespace already skipped)."""
        if depth > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH} levels")
        self.values_at[path] = self.pos
        text = self.text
        char = text[self.pos] if self.pos < len(text) else ""
        if char == "{":
            return self.object(path, depth)
        if char == "[":
            return self.array(path, depth)
        if char == '"':
            return self.string()
        if char == "-" or char.isdigit():
            return self.number()
        for word, literal in _LITERALS:
            if text.startswith(word, self.pos):
                self.pos += len(word)
                return literal
        raise self.fail(f"expected a value, found {self.describe()}")

    def object(self, path: Path, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        self.pos += 1  # "{"
        while True:
            self.skip()
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return result
            if not self.text.startswith('"', self.pos):
                raise self.fail(f"expected a string key or '}}', found {self.describe()}")
            key_offset = self.pos
            key = self.string()
            if key in result:
                raise self.fail(f"duplicate key {key!r}", key_offset)
            child = (*path, key)
            self.keys_at[child] = key_offset
            self.skip()
            if not self.text.startswith(":", self.pos):
                raise self.fail(f"expected ':' after key {key!r}, found {self.describe()}")
            self.pos += 1
            self.skip()
            result[key] = self.value(child, depth + 1)
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif self.text.startswith("}", self.pos):
                self.pos += 1
                return result
            else:
                raise self.fail(f"expected ',' or '}}' in object, found {self.describe()}")

    def array(self, path: Path, depth: int) -> list[Any]:
        result: list[Any] = []
        self.pos += 1  # "["
        while True:
            self.skip()
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return result
            result.append(self.value((*path, len(result)), depth + 1))
            self.skip()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif self.text.startswith("]", self.pos):
                self.pos += 1
                return result
            else:
                raise self.fail(f"expected ',' or ']' in array, found {self.describe()}")

    def string(self) -> str:
        start = self.pos
        self.pos += 1  # opening quote
        text = self.text
        parts: list[str] = []
        while True:
            run = _STRING_RUN.match(text, self.pos)
            if run:
                parts.append(run.group())
                self.pos = run.end()
            if self.pos >= len(text):
                raise self.fail("unterminated string", start)
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(parts)
            if char == "\\":
                parts.append(self.escape())
            else:
                raise self.fail(f"control character {char!r} in string (escape it)")

    def escape(self) -> str:
        """Decode one backslash escape at ``pos``; pairs UTF-16 surrogates."""
        start = self.pos
        kind = self.text[self.pos + 1 : self.pos + 2]
        if kind in _ESCAPES:
            self.pos += 2
            return _ESCAPES[kind]
        if kind != "u":
            raise self.fail("invalid escape in string", start)
        high = self.hex4(start)
        if 0xDC00 <= high <= 0xDFFF:
            raise self.fail("unpaired surrogate escape in string", start)
        if 0xD800 <= high <= 0xDBFF:
            if not self.text.startswith("\\u", self.pos):
                raise self.fail("unpaired surrogate escape in string", start)
            low = self.hex4(self.pos)
            if not 0xDC00 <= low <= 0xDFFF:
                raise self.fail("unpaired surrogate escape in string", start)
            return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
        return chr(high)

    def hex4(self, start: int) -> int:
        """Read ``\\uXXXX`` at ``pos`` and return its code unit."""
        match = _HEX4.match(self.text, self.pos + 2)
        if not match:
            raise self.fail("invalid \\u escape in string (need 4 hex digits)", start)
        self.pos = match.end()
        return int(match.group(), 16)

    def number(self) -> int | float:
        match = _NUMBER.match(self.text, self.pos)
        if not match:
            raise self.fail("invalid number")
        literal = match.group()
        if len(literal) > MAX_NUMBER:
            raise self.fail(f"number longer than {MAX_NUMBER} characters")
        self.pos = match.end()
        if match.group(1) or match.group(2):
            return float(literal)
        return int(literal)
