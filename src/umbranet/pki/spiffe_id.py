"""SPIFFE IDs: the names every Umbranet identity, certificate and ticket refers to.

Shape: ``spiffe://<trust domain>/<kind>/<name>`` for identities and
``spiffe://<trust domain>/controller`` for the controller. `SpiffeId.parse` accepts any ID the
SPIFFE standard allows, because a peer's certificate is untrusted input and we want one strict
parser for it; `SpiffeId.for_identity` builds the narrower Umbranet form.

Rules enforced by `SpiffeId.parse` (SPIFFE-ID spec, section 2):

- scheme is exactly ``spiffe://`` (lowercase);
- trust domain: 1-255 chars of ``[a-z0-9.-_]`` (so no uppercase, port, userinfo or percent
  escapes);
- path: empty, or ``/``-separated segments that are non-empty, not ``.`` or ``..``, of
  ``[A-Za-z0-9.-_]`` (so no trailing slash, query or fragment);
- at most 2048 bytes in all.
"""

import re
from dataclasses import dataclass

from umbranet.pki.errors import PkiError

__all__ = [
    "CONTROLLER_PATH",
    "KINDS",
    "NAME_PATTERN",
    "SpiffeId",
    "is_valid_name",
    "validate_trust_domain",
]

KINDS: frozenset[str] = frozenset({"device", "workload", "router", "admin"})
"""Identity kinds; ``device`` is the default for people's machines."""

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""An identity name (use with `re.fullmatch`); names are unique across kinds."""

CONTROLLER_PATH = "/controller"

_SCHEME = "spiffe://"
_MAX_ID_LENGTH = 2048
_MAX_TRUST_DOMAIN_LENGTH = 255
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed, valid SPIFFE ID; ``path`` is empty or starts with ``/``."""

    trust_domain: str
    path: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        _validate_path(self.path)
        if len(str(self)) > _MAX_ID_LENGTH:
            raise PkiError("spiffe_id_invalid", f"SPIFFE ID longer than {_MAX_ID_LENGTH} bytes")

    @classmethod
    def parse(cls, uri: str) -> "SpiffeId":
        """Parse ``uri`` strictly; raises PkiError ``spiffe_id_invalid``."""
        if not isinstance(uri, str):
            raise PkiError("spiffe_id_invalid", "SPIFFE ID must be a string")
        if len(uri) > _MAX_ID_LENGTH:
            raise PkiError("spiffe_id_invalid", f"SPIFFE ID longer than {_MAX_ID_LENGTH} bytes")
        if not uri.startswith(_SCHEME):
            raise PkiError("spiffe_id_invalid", "SPIFFE ID must start with 'spiffe://'")
        rest = uri[len(_SCHEME) :]
        trust_domain, slash, path = rest.partition("/")
        return cls(trust_domain, slash + path)

    @classmethod
    def for_identity(cls, trust_domain: str, kind: str, name: str) -> "SpiffeId":
        """The ID of identity ``name`` of ``kind`` (one of `KINDS`)."""
        if kind not in KINDS:
            raise PkiError(
                "spiffe_id_invalid", f"unknown identity kind {kind!r}; use one of {sorted(KINDS)}"
            )
        if not is_valid_name(name):
            raise PkiError(
                "spiffe_id_invalid",
                f"identity name {name!r} must match {NAME_PATTERN.pattern}",
            )
        return cls(trust_domain, f"/{kind}/{name}")

    @classmethod
    def controller(cls, trust_domain: str) -> "SpiffeId":
        """The controller's ID, ``spiffe://<td>/controller``."""
        return cls(trust_domain, CONTROLLER_PATH)

    @property
    def kind(self) -> str | None:
        """The identity kind, or None if this is not an identity ID (e.g. the controller)."""
        parsed = self._identity_parts()
        return parsed[0] if parsed else None

    @property
    def name(self) -> str | None:
        """The identity name, or None if this is not an identity ID (e.g. the controller)."""
        parsed = self._identity_parts()
        return parsed[1] if parsed else None

    @property
    def is_controller(self) -> bool:
        return self.path == CONTROLLER_PATH

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:]) if self.path else ()

    def _identity_parts(self) -> tuple[str, str] | None:
        segments = self.segments
        if len(segments) == 2 and segments[0] in KINDS and is_valid_name(segments[1]):
            return segments[0], segments[1]
        return None

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}{self.path}"


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a valid SPIFFE trust domain name, else raise."""
    if not isinstance(trust_domain, str) or not trust_domain:
        raise PkiError("spiffe_id_invalid", "trust domain must be a non-empty string")
    if len(trust_domain) > _MAX_TRUST_DOMAIN_LENGTH:
        raise PkiError(
            "spiffe_id_invalid", f"trust domain longer than {_MAX_TRUST_DOMAIN_LENGTH} chars"
        )
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise PkiError(
            "spiffe_id_invalid", "trust domain may only contain lowercase a-z, 0-9, '.', '-', '_'"
        )
    return trust_domain


def is_valid_name(name: object) -> bool:
    """True if ``name`` is a valid identity name (see `NAME_PATTERN`)."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def _validate_path(path: str) -> None:
    if not isinstance(path, str):
        raise PkiError("spiffe_id_invalid", "SPIFFE ID path must be a string")
    if not path:
        return
    if not path.startswith("/"):
        raise PkiError("spiffe_id_invalid", "SPIFFE ID path must start with '/'")
    for segment in path[1:].split("/"):
        if not segment:
            raise PkiError("spiffe_id_invalid", "SPIFFE ID path has an empty segment")
        if segment in (".", ".."):
            raise PkiError("spiffe_id_invalid", "SPIFFE ID path has a '.' or '..' segment")
        if not _SEGMENT.fullmatch(segment):
            raise PkiError(
                "spiffe_id_invalid",
                "SPIFFE ID path segments may only contain A-Z, a-z, 0-9, '.', '-', '_'",
            )
