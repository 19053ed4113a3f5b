"""whois: which overlay identity is behind a loopback connection the agent delivered.

The agent is one end of every local connection it carries, so it can name the identity on
the far side of the overlay for it (Tailscale's whois, here for loopback). A connection is
found by its *ephemeral* end, the one address that is unique to it:

- hosting: the agent connects out to the app's host address; the app sees the agent's
  source address as its peer address (``inbound``: the identity is the dialer);
- dialing: a local client connects to the agent's listener; the client's own address is
  unique (``outbound``: the identity is the service's host).

Entries live exactly as long as their connection.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

from umbranet.proto.e2e import PeerIdentity

__all__ = ["Address", "Delivery", "WhoisTable", "parse_address"]

Address = tuple[str, int]
Direction = Literal["inbound", "outbound"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """A connection the agent carries: the proven identity behind it and how it got here."""

    peer: PeerIdentity
    service: str
    direction: Direction
    router: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.peer.name,
            "spiffe_id": self.peer.spiffe_id,
            "attributes": list(self.peer.attributes),
            "service": self.service,
            "direction": self.direction,
            "router": self.router,
        }


class WhoisTable:
    """Live deliveries keyed by their connection's ephemeral (host, port)."""

    def __init__(self) -> None:
        self._entries: dict[Address, Delivery] = {}

    def add(self, address: Address, delivery: Delivery) -> None:
        self._entries[_normal(address)] = delivery

    def remove(self, address: Address) -> None:
        self._entries.pop(_normal(address), None)

    def lookup(self, address: Address) -> Delivery | None:
        return self._entries.get(_normal(address))

    def __len__(self) -> int:
        return len(self._entries)


def parse_address(text: str) -> Address:
    """``127.0.0.1:5000`` or ``[::1]:5000`` -> (host, port); ValueError otherwise."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected IP:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected an IP address, got {host!r}") from None
    return _normal((host, int(port)))


def _normal(address: Address) -> Address:
    """One spelling per address: ``::ffff:127.0.0.1`` is 127.0.0.1, IPv6 compressed."""
    host, port = address[0], address[1]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host, port
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), port
