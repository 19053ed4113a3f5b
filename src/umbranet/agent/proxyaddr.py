"""Proxy addresses: one stable IPv4 address per dialable service, from the agent's range.

In root mode ``db.umbra`` resolves to an address such as ``100.93.12.7`` that exists nowhere;
the kernel redirect sends connections to it to the agent, which maps the address back to
the service. The address is derived from the service's name (so it survives restarts and is
the same on every machine with the same range), moving to the next free address on a
collision, and remembered in the state directory once chosen, so a name's address never
changes while the agent lives and rarely after.

No sockets and no clock: its only IO is the optional JSON file of recorded choices.
A service that goes away keeps its address, so one that comes back gets the same one
(clients' cached DNS answers stay right).
"""

from __future__ import annotations

import ipaddress
import json
import os
import zlib
from pathlib import Path

__all__ = ["DEFAULT_PROXY_RANGE", "ProxyAddresses", "parse_range"]

# The shared address space of RFC 6598 (carrier-grade NAT): not routed on the internet and
# rarely used inside the hosts that run an agent.
DEFAULT_PROXY_RANGE = "100.64.0.0/10"


def parse_range(text: str) -> ipaddress.IPv4Network:
    """An IPv4 network with room for services (at most /24); ValueError otherwise."""
    network = ipaddress.IPv4Network(text, strict=True)
    if network.prefixlen > 24:
        raise ValueError(f"proxy range {text} is too small (use /24 or larger)")
    return network


class ProxyAddresses:
    """The allocation table: service name <-> proxy address."""

    def __init__(self, network: ipaddress.IPv4Network, path: Path | None = None) -> None:
        self.network = network
        self._path = path
        self._by_service: dict[str, ipaddress.IPv4Address] = {}
        self._by_address: dict[ipaddress.IPv4Address, str] = {}
        for service, address in _load(path, network).items():
            if address not in self._by_address:
                self._assign(service, address)

    def ensure(self, service: str) -> ipaddress.IPv4Address:
        """The address of `service`, allocating (and recording) one the first time."""
        current = self._by_service.get(service)
        if current is not None:
            return current
        usable = self.network.num_addresses - 2
        start = zlib.crc32(service.encode("utf-8")) % usable
        for step in range(usable):
            candidate = self.network.network_address + 1 + (start + step) % usable
            if candidate not in self._by_address and not _reserved(candidate):
                self._assign(service, candidate)
                self._save()
                return candidate
        raise ValueError(f"proxy range {self.network} is full")

    def service_for(self, address: str) -> str | None:
        try:
            parsed = ipaddress.IPv4Address(address)
        except ValueError:
            return None
        return self._by_address.get(parsed)

    def address_of(self, service: str) -> ipaddress.IPv4Address | None:
        return self._by_service.get(service)

    def snapshot(self) -> dict[str, str]:
        return {s: str(a) for s, a in sorted(self._by_service.items())}

    def _assign(self, service: str, address: ipaddress.IPv4Address) -> None:
        self._by_service[service] = address
        self._by_address[address] = service

    def _save(self) -> None:
        if self._path is None:
            return
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.snapshot(), indent=2, sort_keys=True) + "\n")
        os.replace(temporary, self._path)


def _reserved(address: ipaddress.IPv4Address) -> bool:
    """Addresses ending in .0 or .255 confuse some tools that assume /24 networks."""
    return address.packed[3] in (0, 255)


def _load(path: Path | None, network: ipaddress.IPv4Network) -> dict[str, ipaddress.IPv4Address]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    found: dict[str, ipaddress.IPv4Address] = {}
    if isinstance(data, dict):
        for service, text in data.items():
            try:
                address = ipaddress.IPv4Address(text)
            except (TypeError, ValueError):
                continue
            if address in network and not _reserved(address):
                found[str(service)] = address
    return found
