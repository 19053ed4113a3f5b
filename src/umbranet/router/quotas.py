"""What one router lets each link and identity cost it: limits, token buckets, window budgets.

A router serves many identities at once, and an enrolled identity can be malicious. Nothing
one client does may take the router (or a dark service behind it) away from the others:

- handshakes must finish within `handshake_timeout`, and each dialer identity may have only
  `max_pending_per_identity` circuits waiting for theirs (65,536 never-finished DIALs no
  longer fill a host's link);
- ticket verifications (an Ed25519 check each) and control frames are rate-limited per link
  and per identity, so a flood of forged tickets or PINGs cannot freeze the event loop;
- every byte a router may have to hold was promised by a window (DATA never exceeds what the
  receiver announced), so windows are capped (`max_window`) and the bytes relayed towards a
  link and not yet credited back are budgeted per link and router-wide, with an allowance per
  circuit the size of the SDK's window: past the link's budget its heaviest circuit is reset,
  past the router's the heaviest link is shed. Circuits that keep to the default window are
  never near either, however many there are; only larger windows that stop being read are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from umbranet.proto.link import LinkTimers
from umbranet.wire import ErrorCode

__all__ = ["SwitchLimits", "TokenBucket"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SwitchLimits:
    """The router's limits; the defaults fit one router serving thousands of endpoints."""

    handshake_timeout: float = 10.0
    max_circuits_per_link: int = 16384
    max_pending_per_identity: int = 256
    max_window: int = 4 * MiB
    # In flight towards a link: 1 MiB per circuit (the SDK's window, so honest readers with
    # any number of streams never get near it) plus 32 MiB; router-wide, the same per circuit
    # plus 512 MiB.
    in_flight_per_circuit: int = 1 * MiB
    in_flight_per_link: int = 32 * MiB
    in_flight_total: int = 512 * MiB
    ticket_checks_per_second: float = 500.0
    ticket_check_burst: int = 1000
    control_frames_per_second: float = 5000.0
    control_frame_burst: int = 10000
    timers: LinkTimers = field(default_factory=LinkTimers)

    def circuit_refusal(
        self, link_circuits: int, pending: int, window: int
    ) -> tuple[ErrorCode, str] | None:
        """Why a new circuit would cost more than it may: its link holds `link_circuits`,
        its dialer has `pending` circuits waiting for their handshake, it asks `window`."""
        if link_circuits >= self.max_circuits_per_link:
            return ErrorCode.TOO_MANY_CIRCUITS, "link has too many circuits"
        if pending >= self.max_pending_per_identity:
            return ErrorCode.QUOTA_EXCEEDED, "too many circuits waiting for their handshake"
        if window > self.max_window:
            return ErrorCode.QUOTA_EXCEEDED, f"window over this router's {self.max_window}"
        return None

    def link_budget(self, circuits: int) -> int:
        """Bytes that may be in flight towards a link with `circuits` circuits."""
        return self.in_flight_per_link + circuits * self.in_flight_per_circuit

    def total_budget(self, circuits: int) -> int:
        """Bytes that may be in flight router-wide with `circuits` circuits."""
        return self.in_flight_total + circuits * self.in_flight_per_circuit


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved; time comes in as `now` (monotonic)."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if there are enough; False (nothing spent) otherwise."""
        if now > self._at:
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True
