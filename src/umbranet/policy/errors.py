"""Errors of the policy layer: why a policy document was refused, and where.

Two sides, as in the PKI layer: `PolicyError` means the *document* is bad (it does not parse,
names something unknown, or fails its own tests) and carries a stable machine ``code``, a human
``reason`` and, where the fault has a place in the text, the 1-based ``line`` and ``column``;
`PolicyUsageError` means *we* called the API wrongly (a naive datetime, an unknown action
type) and is a `ValueError`, because it is a bug to fix rather than a fault to report.

The controller keeps the previous policy in force whenever it catches a `PolicyError`, and
shows the code, the place and the reason to the person who saved the document.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["CODES", "PolicyError", "PolicyUsageError", "require_aware"]

CODES: frozenset[str] = frozenset(
    {
        "policy_syntax",  # not HuJSON: bad token, unterminated string/comment, too deep
        "policy_schema",  # parsed, but a section/field has the wrong shape or an unknown key
        "policy_selector",  # a src/dst/owner selector is malformed
        "policy_ports",  # a port list is malformed or out of range
        "policy_unknown_group",
        "policy_unknown_tag",  # tags must be declared in tagOwners
        "policy_unknown_posture",
        "policy_unknown_service",
        "policy_unknown_attribute",  # no known service carries the attribute
        "policy_group_cycle",
        "policy_posture",  # a posture condition is malformed (version, CIDR, time window)
        "policy_http",  # an http rule's methods or paths are malformed
        "policy_test_invalid",  # a `tests` entry is malformed
        "policy_tests_failed",  # the document's own tests do not pass
    }
)


class PolicyError(Exception):
    """The policy document was refused; ``code`` is stable, ``reason`` is for humans.

    ``line`` and ``column`` (1-based, counted in characters) point at the offending token
    when there is one. ``details`` lists every failure when there are several (failed tests).
    """

    def __init__(
        self,
        code: str,
        reason: str,
        line: int | None = None,
        column: int | None = None,
        details: tuple[str, ...] = (),
    ) -> None:
        if code not in CODES:
            raise PolicyUsageError(f"unknown PolicyError code {code!r}")
        super().__init__(code, reason, line, column)
        self.code = code
        self.reason = reason
        self.line = line
        self.column = column
        self.details = details

    @property
    def where(self) -> str:
        """``line 3, column 7`` (or empty when the fault has no single place)."""
        if self.line is None:
            return ""
        if self.column is None:
            return f"line {self.line}"
        return f"line {self.line}, column {self.column}"

    def __str__(self) -> str:
        where = self.where
        return f"{self.code}: {where}: {self.reason}" if where else f"{self.code}: {self.reason}"

    def __repr__(self) -> str:
        return f"PolicyError({self.code!r}, {self.reason!r}, {self.line!r}, {self.column!r})"


class PolicyUsageError(ValueError):
    """The caller misused the API (a local bug), e.g. passed a naive datetime."""


def require_aware(now: datetime | None) -> datetime | None:
    """Return ``now`` in UTC (or None), refusing naive datetimes.

    A naive datetime would be read as local time, shifting every time window by the host's
    UTC offset; that is a bug in the caller, so fail loudly instead of deciding wrongly.
    """
    if now is None:
        return None
    if not isinstance(now, datetime):
        raise PolicyUsageError(f"now must be a datetime, not {type(now).__name__}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise PolicyUsageError("now must be timezone-aware (use datetime.now(UTC))")
    return now.astimezone(UTC)
