"""Configuration of a WireGuard device that is not part of the protocol itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["DeviceConfig", "NoiseIdentity"]


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """Knobs that are not part of the protocol.

    `handshake_load_threshold`: more handshake messages than this (with a valid MAC1) within
    one second puts the device under load, where MAC2 is required (the reference
    implementations use the length of their handshake queue for the same decision).
    """

    handshake_load_threshold: int = 64


class NoiseIdentity(Protocol):
    """What `Device.for_identity` needs of an identity (an `IdentityFile` has it)."""

    @property
    def noise_private_key(self) -> bytes: ...
