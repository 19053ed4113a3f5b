"""What a WireGuard device tells its owner: frozen, slotted events from `Device.poll_event`."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "HandshakeCompleted", "PacketsReceived", "PeerSilent"]


@dataclass(frozen=True, slots=True)
class PacketsReceived:
    """Authenticated IP packets from `peer`, each from a source address the peer may use, in
    the order they arrived. The device appends to the newest such event of the same peer
    while it is still queued, so a burst reaches its owner as one batch."""

    peer: bytes  # the peer's X25519 public key
    packets: list[bytes]


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A new session with `peer` is usable; `initiator` says whether we started it."""

    peer: bytes
    initiator: bool


@dataclass(frozen=True, slots=True)
class PeerSilent:
    """We gave up reaching `peer` (REKEY_ATTEMPT_TIME of unanswered handshakes)."""

    peer: bytes
    reason: str


Event = PacketsReceived | HandshakeCompleted | PeerSilent
