"""Per-circuit credit-based flow control, as pure accounting.

Each direction of a circuit has a window in bytes, announced by the receiver when the circuit
opens (DIAL/CONNECT/ACCEPT `window`). The sender may have at most that many bytes of sealed
DATA payload outstanding; the receiver returns credit (CREDIT frames) as its application
consumes data. Because routers relay CREDIT and count DATA too, the bytes any hop buffers for
a circuit never exceed its window: a slow reader stalls only its own circuit, and memory per
circuit stays bounded without pausing the shared link.
"""

from __future__ import annotations

DEFAULT_WINDOW = 1024 * 1024
MAX_WINDOW = 16 * 1024 * 1024
MIN_WINDOW = 64 * 1024 + 16


class SendCredit:
    """What this side may still send on one circuit."""

    __slots__ = ("available",)

    def __init__(self, window: int = 0) -> None:
        self.available = window

    def consume(self, nbytes: int) -> None:
        """Spend credit for a DATA payload of `nbytes` (callers check `available` first)."""
        if nbytes > self.available:
            raise ValueError("sending beyond the peer's window")
        self.available -= nbytes

    def grant(self, nbytes: int) -> bool:
        """Add credit from a CREDIT frame; False if it would exceed the largest window."""
        if nbytes <= 0 or self.available + nbytes > MAX_WINDOW:
            return False
        self.available += nbytes
        return True


class ReceiveWindow:
    """What this side has promised to buffer for one circuit, and when to return credit."""

    __slots__ = ("buffered", "unreturned", "window")

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = window
        self.buffered = 0  # bytes the peer sent that we have not yet returned as credit
        self.unreturned = 0  # bytes consumed by the application, not yet returned

    def receive(self, nbytes: int) -> bool:
        """Account an inbound DATA payload; False means the peer overran the window."""
        if self.buffered + nbytes > self.window:
            return False
        self.buffered += nbytes
        return True

    def consume(self, nbytes: int) -> int:
        """The application consumed `nbytes` of wire payload: credit to return now, or 0.

        Credit goes back in batches of at least a quarter window, so a bulk transfer costs
        one CREDIT frame per quarter window instead of one per DATA frame.
        """
        self.unreturned += nbytes
        if self.unreturned * 4 < self.window:
            return 0
        credit, self.unreturned = self.unreturned, 0
        self.buffered -= credit
        return credit


class RelayAccount:
    """A router's view of one direction of a circuit: sealed bytes in flight, bounded."""

    __slots__ = ("in_flight", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.in_flight = 0

    def forward(self, nbytes: int) -> bool:
        """Account DATA passing toward the receiver; False if the sender ignored its window."""
        self.in_flight += nbytes
        return self.in_flight <= self.window

    def credit(self, nbytes: int) -> bool:
        """Account CREDIT passing back; False if the receiver returned more than was sent."""
        if nbytes <= 0 or nbytes > self.in_flight:
            return False
        self.in_flight -= nbytes
        return True
