"""Overlay addresses for network mode: a stable IPv4 and IPv6 address per identity.

Every identity gets one IPv4 address from a carrier-grade NAT range (100.64.0.0/10 by
default, configurable like the proxy range) and one IPv6 address from a unique local (ULA,
RFC 4193) prefix. Why derived rather than counted: an address computed from the identity's
id is the same on every controller replica and after a database restore, needs no sequence
to coordinate, and tells an observer nothing about enrollment order.

How: candidate i of an identity is `BLAKE2s(id, i)` reduced into the range's usable hosts
(the network and broadcast addresses, and anything `reserved`, are never handed out). The
first candidate that is free wins; after `_PROBES` taken candidates the search goes on
linearly from the last one, so a nearly full pool still terminates and finds any free
address. An identity whose first candidate is free therefore always gets the same address,
whatever order identities arrive in; one that collided keeps what it got because the
controller stores every assignment and hands it back through `restore` when it starts.

The ULA prefix is a /48 whose 40-bit global ID is derived from a seed (the trust domain),
so two Umbranet networks are unlikely to pick the same one, and a network keeps its prefix.

Pure: no IO, no clock. `AddressPoolExhausted` is the one refusal (the range is full);
`AddressingUsageError` (a ValueError) means the caller passed a bad range or a conflicting
restore.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_IPV4_RANGE",
    "AddressAllocator",
    "AddressPoolExhausted",
    "AddressingUsageError",
    "OverlayAddresses",
    "ula_prefix",
]

DEFAULT_IPV4_RANGE = "100.64.0.0/10"
_PROBES = 32
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressPoolExhausted(Exception):
    """Every usable address of the range is assigned (code `address_pool_exhausted`)."""

    code = "address_pool_exhausted"


class AddressingUsageError(ValueError):
    """A bad range, prefix or restore: the caller's mistake."""


@dataclass(frozen=True, slots=True)
class OverlayAddresses:
    """One identity's overlay addresses."""

    identity: str
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address


def ula_prefix(seed: str) -> ipaddress.IPv6Network:
    """The /48 ULA prefix `fdXX:XXXX:XXXX::/48` of a network, from its seed (trust domain)."""
    global_id = hashlib.blake2s(seed.encode(), person=b"umb-ula").digest()[:5]
    return ipaddress.IPv6Network((b"\xfd" + global_id + bytes(10), 48))


class _Pool:
    """One address family's range, what is taken, and the derivation of candidates."""

    __slots__ = ("_base", "_label", "_last", "_reserved", "_size", "owners")

    def __init__(self, network: _Network, reserved: set[_Address], label: bytes) -> None:
        self._base = int(network.network_address)
        self._size = network.num_addresses
        # The network address, and for IPv4 the broadcast address, are never hosts.
        self._last = self._size - (1 if network.version == 6 else 2)
        self._reserved = {int(a) - self._base for a in reserved if a in network}
        self._label = label
        self.owners: dict[int, str] = {}

    def usable(self) -> int:
        reserved = sum(1 for r in self._reserved if 1 <= r <= self._last)
        return self._last - reserved

    def free(self, offset: int) -> bool:
        return (
            1 <= offset <= self._last
            and offset not in self._reserved
            and (offset not in self.owners)
        )

    def pick(self, identity: str) -> int:
        offset = 1
        for attempt in range(_PROBES):
            digest = hashlib.blake2s(f"{identity}\0{attempt}".encode(), person=self._label).digest()
            offset = 1 + int.from_bytes(digest, "big") % self._last
            if self.free(offset):
                return offset
        for step in range(self._last):
            candidate = 1 + (offset - 1 + step) % self._last
            if self.free(candidate):
                return candidate
        raise AddressPoolExhausted(f"no free address in a range of {self._last} hosts")

    def address(self, offset: int) -> int:
        return self._base + offset

    def offset_of(self, address: _Address) -> int:
        return int(address) - self._base


class AddressAllocator:
    """Assigns and remembers overlay addresses; the controller persists what it returns."""

    __slots__ = ("_assigned", "_v4", "_v6", "ipv4_range", "ipv6_prefix")

    def __init__(
        self,
        *,
        ipv4_range: str = DEFAULT_IPV4_RANGE,
        ipv6_prefix: str | ipaddress.IPv6Network,
        reserved: Iterable[str] = (),
    ) -> None:
        try:
            v4 = ipaddress.IPv4Network(ipv4_range)
            v6 = ipaddress.IPv6Network(ipv6_prefix)
            reserved_addresses = {ipaddress.ip_address(r) for r in reserved}
        except ValueError as exc:
            raise AddressingUsageError(str(exc)) from exc
        if v4.prefixlen > 30:
            raise AddressingUsageError("the IPv4 range needs at least two usable addresses")
        if v6.prefixlen > 120:
            raise AddressingUsageError("the IPv6 prefix must be /120 or shorter")
        self.ipv4_range = v4
        self.ipv6_prefix = v6
        self._v4 = _Pool(v4, reserved_addresses, b"umb-v4")
        self._v6 = _Pool(v6, reserved_addresses, b"umb-v6")
        self._assigned: dict[str, OverlayAddresses] = {}

    def assign(self, identity: str) -> OverlayAddresses:
        """The identity's addresses, choosing them on the first call (idempotent)."""
        existing = self._assigned.get(identity)
        if existing is not None:
            return existing
        v4 = self._v4.pick(identity)
        v6 = self._v6.pick(identity)
        return self._record(identity, v4, v6)

    def restore(self, identity: str, ipv4: str, ipv6: str) -> OverlayAddresses:
        """Take back an assignment the controller stored (at start, or after a restore)."""
        try:
            a4, a6 = ipaddress.IPv4Address(ipv4), ipaddress.IPv6Address(ipv6)
        except ValueError as exc:
            raise AddressingUsageError(str(exc)) from exc
        if a4 not in self.ipv4_range or a6 not in self.ipv6_prefix:
            raise AddressingUsageError(f"{identity}: {ipv4} / {ipv6} is outside the ranges")
        existing = self._assigned.get(identity)
        if existing is not None:
            if (existing.ipv4, existing.ipv6) == (a4, a6):
                return existing
            raise AddressingUsageError(f"{identity} already has other addresses")
        v4, v6 = self._v4.offset_of(a4), self._v6.offset_of(a6)
        if not self._v4.free(v4) or not self._v6.free(v6):
            raise AddressingUsageError(f"{identity}: {ipv4} or {ipv6} is taken or reserved")
        return self._record(identity, v4, v6)

    def release(self, identity: str) -> OverlayAddresses | None:
        """Free an identity's addresses (it was deleted); returns what it had."""
        addresses = self._assigned.pop(identity, None)
        if addresses is not None:
            del self._v4.owners[self._v4.offset_of(addresses.ipv4)]
            del self._v6.owners[self._v6.offset_of(addresses.ipv6)]
        return addresses

    def lookup(self, identity: str) -> OverlayAddresses | None:
        return self._assigned.get(identity)

    def owner_of(self, address: str) -> str | None:
        """Which identity holds an overlay address (for `umbra whois` and packet filters)."""
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return None
        if isinstance(parsed, ipaddress.IPv4Address) and parsed in self.ipv4_range:
            return self._v4.owners.get(self._v4.offset_of(parsed))
        if isinstance(parsed, ipaddress.IPv6Address) and parsed in self.ipv6_prefix:
            return self._v6.owners.get(self._v6.offset_of(parsed))
        return None

    def statistics(self) -> dict[str, int]:
        return {
            "assigned": len(self._assigned),
            "ipv4_usable": self._v4.usable(),
            "ipv4_free": self._v4.usable() - len(self._v4.owners),
        }

    def _record(self, identity: str, v4: int, v6: int) -> OverlayAddresses:
        addresses = OverlayAddresses(
            identity,
            ipaddress.IPv4Address(self._v4.address(v4)),
            ipaddress.IPv6Address(self._v6.address(v6)),
        )
        self._v4.owners[v4] = identity
        self._v6.owners[v6] = identity
        self._assigned[identity] = addresses
        return addresses
