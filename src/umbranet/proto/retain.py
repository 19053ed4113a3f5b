"""The retransmit buffer of one direction of a stream: sent bytes the peer has not
acknowledged, kept so a resumed session can send them again.

Sequence numbers are byte offsets of the direction's plaintext. On one circuit they are
implicit (the AEAD nonce counter already refuses a dropped, replayed or reordered frame), so
DATA frames carry no extra header. Acknowledgements come two ways:

- CREDIT: a receiver returns credit only for bytes its application took, so the credit that
  has come back covers a prefix of the frames sent; those frames are freed. Credit is not
  authenticated: a router that forged it could free bytes early, but then the peer's sealed
  `received` in the resume exchange is below what is kept, and the resume fails with
  `resume_gap` (an error, never a hole in the stream).
- RESUME / RESUME_OK: the peer's sealed count of bytes it holds; sending restarts there.

Memory: a sender never has more uncredited sealed bytes than the peer's window, so this
buffer holds at most one peer window of plaintext per direction (default 1 MiB, at most
16 MiB). When it is full the sender has no credit either, so it stops sealing, its queue
grows, and the SDK's `drain` makes the application wait: backpressure, never a drop.
"""

from __future__ import annotations

from collections import deque

__all__ = ["Retained"]


class Retained:
    """Frames sent and not yet acknowledged, in order: their sealed lengths and plaintexts.

    Two queues side by side rather than one of (length, plaintext) pairs: a pair would be one
    more object built per DATA frame, and a tracked one, so a full window of them (thousands
    of small frames before credit comes back) set off collections of the youngest generation
    on a request/response stream.
    """

    __slots__ = ("_credit", "_plain", "_sealed", "base", "fin", "sent")

    def __init__(self, offset: int = 0) -> None:
        self._sealed: deque[int] = deque()
        self._plain: deque[bytes | memoryview] = deque()
        self._credit = 0  # credit returned beyond the frames it freed
        self.base = offset  # offset of the first byte still kept
        self.sent = offset  # offset after the last byte sent
        self.fin = False  # our FIN was sent (and is kept until a resume says it arrived)

    @property
    def size(self) -> int:
        """Plaintext bytes kept."""
        return self.sent - self.base

    @property
    def frames(self) -> int:
        return len(self._sealed)

    def sent_frame(self, sealed: int, plaintext: bytes | memoryview, fin: bool = False) -> None:
        """A DATA frame of `sealed` wire bytes left carrying `plaintext` (and FIN)."""
        self._sealed.append(sealed)
        self._plain.append(plaintext)
        self.sent += len(plaintext)
        if fin:
            self.fin = True

    def credited(self, amount: int) -> None:
        """Credit came back: free every frame it fully covers."""
        credit = self._credit + amount
        sealed, plain = self._sealed, self._plain
        while sealed and credit >= sealed[0]:
            credit -= sealed.popleft()
            self.base += len(plain.popleft())
        self._credit = credit if sealed else 0

    def rewind(self, received: int) -> list[bytes] | None:
        """The peer holds `received` bytes: what must be sent again, in order, or None when
        the peer claims bytes never sent or bytes already freed (the stream has a gap)."""
        if not self.base <= received <= self.sent:
            return None
        skip = received - self.base
        again: list[bytes] = []
        for plaintext in self._plain:
            if skip >= len(plaintext):
                skip -= len(plaintext)
                continue
            again.append(bytes(plaintext[skip:]))
            skip = 0
        self._sealed.clear()
        self._plain.clear()
        self._credit = 0
        self.base = self.sent = received
        return again
