"""The answer every access decision gives: allowed or not, and why.

A bare bool cannot be logged, counted or shown to the person who was refused; a `Verdict`
carries the reason with it, so the controller logs and counts it and returns it in a
`not_authorized` error. The future HuJSON policy engine returns the same type.
"""

from dataclasses import dataclass

__all__ = ["Verdict"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome of one access decision; ``reason`` is human text, safe to log and to return."""

    allowed: bool
    reason: str

    @classmethod
    def allow(cls, reason: str) -> "Verdict":
        return cls(True, reason)

    @classmethod
    def deny(cls, reason: str) -> "Verdict":
        return cls(False, reason)
