"""Just enough of IPv4 and IPv6 headers to route by destination and filter by source.

WireGuard's "cryptokey routing": a packet we send goes to the peer whose allowed IPs hold
its destination (longest prefix wins), and a packet we receive from a peer is accepted only
if its source is in that peer's allowed IPs. The padding a sender adds to a packet is
removed using the length field of the IP header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["AllowedIps", "IpNetwork", "packet_fields"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


def packet_fields(packet: bytes) -> tuple[IpAddress, IpAddress, int] | None:
    """(source, destination, total length) of an IP packet, or None if it is not one."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            return None
        total = int.from_bytes(packet[2:4], "big")
        if total < 20 or total > len(packet):
            return None
        return ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20]), total
    if version == 6:
        if len(packet) < 40:
            return None
        total = 40 + int.from_bytes(packet[4:6], "big")
        if total > len(packet):
            return None
        return ipaddress.IPv6Address(packet[8:24]), ipaddress.IPv6Address(packet[24:40]), total
    return None


class AllowedIps(Generic[T]):
    """Networks mapped to owners, looked up by longest prefix (a peer per network)."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: list[tuple[IpNetwork, T]] = []

    def add(self, networks: Iterable[str | IpNetwork], owner: T) -> None:
        """Give `owner` these networks (taking them from whoever had them, as `wg set` does)."""
        for item in networks:
            network = ipaddress.ip_network(item, strict=False)
            self._entries = [(n, o) for n, o in self._entries if n != network]
            self._entries.append((network, owner))
        self._entries.sort(key=lambda entry: entry[0].prefixlen, reverse=True)

    def remove_owner(self, owner: T) -> None:
        """Forget every network of `owner`."""
        self._entries = [(n, o) for n, o in self._entries if o is not owner]

    def lookup(self, address: IpAddress) -> T | None:
        """The owner of the most specific network holding `address`."""
        for network, owner in self._entries:
            if network.version == address.version and address in network:
                return owner
        return None

    def networks_of(self, owner: T) -> list[IpNetwork]:
        """The networks `owner` holds."""
        return [n for n, o in self._entries if o is owner]
