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
    """Networks mapped to owners, looked up by longest prefix (one owner per network).

    One hash table per (IP version, prefix length) in use, keyed by the network as an
    integer: a lookup masks the address once per length in use, longest first, so its cost
    does not grow with the number of peers (a network of thousands of /32s and /128s is two
    lengths), and adding a network is a dict store, not a re-sort of every entry.
    """

    __slots__ = ("_by_owner", "_memo", "_order", "_tables")

    def __init__(self) -> None:
        # (version, prefix length) -> {network as int: owner}
        self._tables: dict[tuple[int, int], dict[int, T]] = {}
        # version -> [(mask, table)] of the lengths in use, longest prefix first
        self._order: dict[int, list[tuple[int, dict[int, T]]]] = {4: [], 6: []}
        # owner -> its networks as (version, prefix length, network as int)
        self._by_owner: dict[T, set[tuple[int, int, int]]] = {}
        # address bytes -> owner, for `owner_of`; emptied whenever the networks change
        self._memo: dict[bytes, T | None] = {}

    def add(self, networks: Iterable[str | IpNetwork], owner: T) -> None:
        """Give `owner` these networks (taking them from whoever had them, as `wg set` does)."""
        for item in networks:
            network = ipaddress.ip_network(item, strict=False)
            version, prefixlen = network.version, network.prefixlen
            base = int(network.network_address)
            table = self._tables.get((version, prefixlen))
            if table is None:
                table = self._tables[version, prefixlen] = {}
                self._order_lengths(version)
            previous = table.get(base, _NOBODY)
            if previous is not _NOBODY and previous is not owner:
                self._drop_from_owner(previous, (version, prefixlen, base))  # type: ignore[arg-type]
            table[base] = owner
            self._by_owner.setdefault(owner, set()).add((version, prefixlen, base))
        self._memo.clear()

    def remove_owner(self, owner: T) -> None:
        """Forget every network of `owner`."""
        emptied: set[int] = set()
        for version, prefixlen, base in self._by_owner.pop(owner, ()):
            table = self._tables[version, prefixlen]
            del table[base]
            if not table:
                del self._tables[version, prefixlen]
                emptied.add(version)
        for version in emptied:
            self._order_lengths(version)
        self._memo.clear()

    def lookup(self, version: int, address: int) -> T | None:
        """The owner of the most specific network of that IP version holding `address`."""
        for mask, table in self._order[version]:
            owner = table.get(address & mask, _NOBODY)
            if owner is not _NOBODY:
                return owner  # type: ignore[return-value]
        return None

    def owner_of(self, address: bytes) -> T | None:
        """`lookup` by the address as it sits in a header (4 bytes IPv4, 16 IPv6), memoised:
        a flow's packets ask for the same few addresses, and one dict hit costs less than a
        mask and a probe per prefix length. Bounded, and emptied when networks change."""
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
            (ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network)((base, prefixlen))
            for version, prefixlen, base in sorted(self._by_owner.get(owner, ()))
        ]

    def _drop_from_owner(self, owner: T, network: tuple[int, int, int]) -> None:
        held = self._by_owner[owner]
        held.discard(network)
        if not held:
            del self._by_owner[owner]

    def _order_lengths(self, version: int) -> None:
        """The lookup order of `version`'s tables: longest prefix first."""
        bits = 32 if version == 4 else 128
        self._order[version] = [
            (((1 << length) - 1) << (bits - length), table)
            for (v, length), table in sorted(self._tables.items(), reverse=True)
            if v == version
        ]


_NOBODY = object()  # a table's answer for "no such network" (an owner may be falsy)
