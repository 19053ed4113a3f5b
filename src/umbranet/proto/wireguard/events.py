"""What a WireGuard device tells its owner: frozen, slotted events from `Device.poll_event`."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "HandshakeCompleted", "PacketReceived", "PeerSilent"]


@dataclass(frozen=True, slots=True)
class PacketReceived:
    """An authenticated IP packet from `peer` whose source address the peer may use."""

    peer: bytes  # the peer's X25519 public key
    packet: bytes


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


Event = PacketReceived | HandshakeCompleted | PeerSilent
