"""The receive side's anti-replay window over 64-bit counters, as in RFC 6479.

A ring of 32 blocks of 64 bits (2048 bits) remembers which counters have been seen. Moving
forward clears only the blocks the new highest counter skips over, so a jump costs at most
32 word writes however far it goes, and nothing is ever shifted bit by bit. A counter is
accepted when it is below the protocol's limit, has not been seen, and is either above the
highest seen or at most `WINDOW` (1984 = 31 blocks) below it. Counters that far behind are
refused even though part of their block may still be in the ring: the rule stays the same
whatever the alignment, which is what the reference-model test checks.

`check` is the cheap test done before decryption (a replayed packet costs no AEAD);
`accept` records a counter only after the packet authenticated, so a forged packet cannot
move the window.
"""

from __future__ import annotations

__all__ = ["REJECT_AFTER_MESSAGES", "RING_BITS", "WINDOW", "ReplayWindow"]

REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
_BLOCK_BITS = 64
_BLOCKS = 32
RING_BITS = _BLOCK_BITS * _BLOCKS
WINDOW = RING_BITS - _BLOCK_BITS


class ReplayWindow:
    """Which counters of one receive key have been seen."""

    __slots__ = ("_last", "_ring")

    def __init__(self) -> None:
        self._last = 0
        self._ring = [0] * _BLOCKS

    def check(self, counter: int) -> bool:
        """Whether `counter` would be accepted (no change)."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        if counter > self._last:
            return True
        if self._last - counter > WINDOW:
            return False
        block = (counter >> 6) % _BLOCKS
        return not (self._ring[block] >> (counter & 63)) & 1

    def accept(self, counter: int) -> bool:
        """Record `counter`; False (and no change) if it is a replay or out of the window."""
        if not self.check(counter):
            return False
        self.record(counter)
        return True

    def record(self, counter: int) -> None:
        """Record a `counter` that `check` passed (the window moved by nothing since)."""
        ring = self._ring
        if counter > self._last:
            current = self._last >> 6
            steps = min((counter >> 6) - current, _BLOCKS)
            for i in range(1, steps + 1):
                ring[(current + i) % _BLOCKS] = 0
            self._last = counter
        ring[(counter >> 6) % _BLOCKS] |= 1 << (counter & 63)
