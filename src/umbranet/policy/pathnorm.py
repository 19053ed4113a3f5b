"""Request paths reduced to one canonical form before HTTP rules compare prefixes.

A prefix rule is only as good as the path it is compared with: ``/public/../admin``,
``/public%2F..%2Fadmin`` or ``//admin`` must not slip past a rule about ``/admin`` because
the server behind would resolve them to ``/admin``. So both the rule's prefixes and each
request's target are normalized the same way:

- the query and fragment are dropped; an absolute-form target (``http://host/p``) keeps its
  path;
- percent-escapes are decoded, except an encoded slash (``%2F``), which stays a literal part
  of its segment (so it can never create a new segment);
- empty and ``.`` segments are dropped and ``..`` removes the previous segment (never
  climbing above the root); a trailing slash is dropped.

A target that cannot be read this way (not starting with ``/``, a bad escape, invalid
UTF-8, a control character or a backslash) gives None, and the request is refused.

Prefixes match on whole segments: ``/public`` matches ``/public`` and ``/public/x``, not
``/publicity``.
"""

from __future__ import annotations

import re

__all__ = ["normalize_path", "path_has_prefix"]

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_MAX_PATH = 8192


def normalize_path(target: str) -> str | None:
    """The canonical path of a request target or rule prefix, or None when unreadable."""
    if not isinstance(target, str) or not target or len(target) > _MAX_PATH:
        return None
    for mark in ("?", "#"):
        target = target.split(mark, 1)[0]
    for scheme in ("http://", "https://"):
        if target.lower().startswith(scheme):
            slash = target.find("/", len(scheme))
            target = "/" if slash == -1 else target[slash:]
    if not target.startswith("/") or "\\" in target:
        return None
    decoded = _decode(target)
    if decoded is None:
        return None
    segments: list[str] = []
    for segment in decoded.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def path_has_prefix(path: str, prefix: str) -> bool:
    """Whole-segment prefix match of two normalized paths."""
    return prefix in ("/", path) or path.startswith(prefix + "/")


def _decode(target: str) -> str | None:
    if target.count("%") != len(_ESCAPE.findall(target)):
        return None  # a '%' that does not start an escape
    raw = bytearray()
    index = 0
    for match in _ESCAPE.finditer(target):
        raw += target[index : match.start()].encode("utf-8", "surrogatepass")
        byte = int(match.group(1), 16)
        raw += b"%2F" if byte == 0x2F else bytes([byte])
        index = match.end()
    raw += target[index:].encode("utf-8", "surrogatepass")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text) or "\\" in text:
        return None
    return text
