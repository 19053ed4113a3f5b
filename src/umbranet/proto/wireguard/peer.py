"""What a device keeps per peer: sessions (keypairs), the pending handshake and the timers.

A peer has up to three keypairs, as in the reference implementations:
- `current`: the session we send with;
- `previous`: the one before, still accepted for packets in flight during a rekey;
- `next`: a responder's new session, not used for sending until the initiator proves it has
  it (its first data packet under it arrives), because until then the response may have been
  lost and sending with it would black-hole traffic.

Keys are only ever replaced, never mutated; `Keypair.send_counter` is the one moving part.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from umbranet.proto.wireguard.cookie import CookieGenerator
from umbranet.proto.wireguard.handshake import InitiatorState, SessionKeys
from umbranet.proto.wireguard.replay import ReplayWindow
from umbranet.proto.wireguard.timers import (
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
)

__all__ = ["Address", "Keypair", "Peer"]

Address = tuple[str, int]


@dataclass(slots=True, eq=False)
class Keypair:
    """One session's two directions, its indices and counters."""

    keys: SessionKeys
    created: float  # monotonic seconds
    local_index: int
    remote_index: int
    send_counter: int = 0
    replay: ReplayWindow = field(default_factory=ReplayWindow)
    sealer: ChaCha20Poly1305 = field(init=False)
    opener: ChaCha20Poly1305 = field(init=False)

    def __post_init__(self) -> None:
        # One AEAD object per direction per session: building it costs a key schedule.
        self.sealer = ChaCha20Poly1305(self.keys.send)
        self.opener = ChaCha20Poly1305(self.keys.receive)

    @property
    def initiator(self) -> bool:
        return self.keys.initiator

    def usable_for_sending(self, now: float) -> bool:
        return now - self.created < REJECT_AFTER_TIME and self.send_counter < REJECT_AFTER_MESSAGES

    def expired(self, now: float) -> bool:
        return now - self.created >= REJECT_AFTER_TIME


@dataclass(slots=True, eq=False)
class Peer:
    """A peer as configured (`wg set ... peer`) and its live state."""

    public_key: bytes
    cookies: CookieGenerator
    preshared_key: bytes | None = None
    endpoint: Address | None = None
    persistent_keepalive: float | None = None
    # handshake we started and are waiting on
    handshake: InitiatorState | None = None
    handshake_index: int | None = None
    last_initiation_sent: float | None = None
    handshake_attempts: int = 0
    # replay protection of initiations: the greatest TAI64N consumed, and when
    latest_timestamp: bytes = b""
    last_initiation_consumed: float | None = None
    # sessions
    current: Keypair | None = None
    previous: Keypair | None = None
    next: Keypair | None = None
    staged: deque[bytes] = field(default_factory=deque)
    timers: dict[str, float] = field(default_factory=dict)
    need_another_keepalive: bool = False
    sent_last_minute_handshake: bool = False
    # figures for statistics()
    rx_bytes: int = 0
    tx_bytes: int = 0
    last_handshake_wall: float | None = None  # unix seconds, as `wg show` reports

    def keypairs(self) -> list[Keypair]:
        return [k for k in (self.current, self.previous, self.next) if k is not None]
