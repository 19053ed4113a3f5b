"""Just enough of IPv4 and IPv6 headers to route by destination and filter by source.

WireGuard's "cryptokey routing": a packet we send goes to the peer whose allowed IPs hold
its destination (longest prefix wins), and a packet we receive from a peer is accepted only
if its source is in that peer's allowed IPs. The padding a sender adds to a packet is
removed using the length field of the IP header.

Addresses stay integers on the data path (`int.from_bytes` of the header bytes, a mask and a
compare per network): building `ipaddress` objects per packet cost more than the AEAD.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["AllowedIps", "IpNetwork", "packet_fields"]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_MEMO_MAX = 4096
T = TypeVar("T")


def packet_fields(packet: bytes) -> tuple[int, int, int, int] | None:
    """(IP version, source, destination, total length) of a packet, or None if not IP.

    Addresses are integers, as `int(ipaddress.ip_address(...))` would give.
    """
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            return None
        total = int.from_bytes(packet[2:4], "big")
        if total < 20 or total > len(packet):
            return None
        return (
            4,
            int.from_bytes(packet[12:16], "big"),
            int.from_bytes(packet[16:20], "big"),
            total,
        )
    if version == 6:
        if len(packet) < 40:
            return None
        total = 40 + int.from_bytes(packet[4:6], "big")
        if total > len(packet):
            return None
        return (
            6,
            int.from_bytes(packet[8:24], "big"),
            int.from_bytes(packet[24:40], "big"),
            total,
        )
    return None


class AllowedIps(Generic[T]):
    """Networks mapped to owners, looked up by longest prefix (one owner per network)."""

    __slots__ = ("_entries", "_memo")

    def __init__(self) -> None:
        # (version, network as int, mask as int, prefix length, owner), longest prefix first
        self._entries: list[tuple[int, int, int, int, T]] = []
        # address bytes -> owner, for `owner_of`; emptied whenever the networks change
        self._memo: dict[bytes, T | None] = {}

    def add(self, networks: Iterable[str | IpNetwork], owner: T) -> None:
        """Give `owner` these networks (taking them from whoever had them, as `wg set` does)."""
        for item in networks:
            network = ipaddress.ip_network(item, strict=False)
            version = network.version
            mask = int(network.netmask)
            base = int(network.network_address)
            self._entries = [
                e for e in self._entries if (e[0], e[1], e[3]) != (version, base, network.prefixlen)
            ]
            self._entries.append((version, base, mask, network.prefixlen, owner))
        self._entries.sort(key=lambda entry: entry[3], reverse=True)
        self._memo.clear()

    def remove_owner(self, owner: T) -> None:
        """Forget every network of `owner`."""
        self._entries = [e for e in self._entries if e[4] is not owner]
        self._memo.clear()

    def lookup(self, version: int, address: int) -> T | None:
        """The owner of the most specific network of that IP version holding `address`."""
        for entry_version, base, mask, _, owner in self._entries:
            if entry_version == version and address & mask == base:
                return owner
        return None

    def owner_of(self, address: bytes) -> T | None:
        """`lookup` by the address as it sits in a header (4 bytes IPv4, 16 IPv6), memoised:
        a flow's packets ask for the same few addresses, and a scan per packet was a
        round trip's worth of time. The memo is bounded and emptied when networks change."""
        memo = self._memo
        try:
            return memo[address]
        except KeyError:
            pass
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        owner = memo[address] = self.lookup(
            4 if len(address) == 4 else 6, int.from_bytes(address, "big")
        )
        return owner

    def networks_of(self, owner: T) -> list[IpNetwork]:
        """The networks `owner` holds."""
        return [
            ipaddress.ip_network((base, prefixlen))
            for _, base, _, prefixlen, o in self._entries
            if o is owner
        ]
