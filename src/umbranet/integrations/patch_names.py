"""Names for the socket patch: which addresses belong to the overlay, and placeholder addresses.

A name the overlay answers for (``NAME.umbra``, or a host of a configured ``host:port`` pair)
resolves to a *placeholder* address from 127.85.0.0/16 (``::ffff:127.85.x.y`` when the caller
asks for IPv6). The patched ``connect`` maps the placeholder back to the name and so to the
service. The range is loopback on purpose: a placeholder that escapes to code the patch cannot
see (a C library, another process) gets "connection refused" on this host and never reaches
any network. One placeholder per name, handed out in order and kept for the patch's lifetime,
so a name keeps its address, as a DNS answer would.

Nothing here opens a socket: it is the pure part of the patch, tested without a network.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass, field

__all__ = ["PLACEHOLDER_NETWORK", "AddressBook", "parse_address", "port_number"]

_SUFFIX = ".umbra"
PLACEHOLDER_NETWORK = ipaddress.IPv4Network("127.85.0.0/16")
# .0 is the network; .1 upward are names; the last one stands for "an overlay peer" on accept.
_FIRST = int(PLACEHOLDER_NETWORK.network_address) + 1
_LAST = int(PLACEHOLDER_NETWORK.broadcast_address) - 2
PEER_PLACEHOLDER = str(PLACEHOLDER_NETWORK.broadcast_address - 1)


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); ``*`` as host means any address."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port in 1-65535, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.lower(), int(port)


def port_number(port: object) -> int:
    """A getaddrinfo ``port`` argument (None, int, digits, or a service name) as a number."""
    if port is None:
        return 0
    if isinstance(port, bytes):
        port = port.decode()
    if isinstance(port, int):
        return port
    text = str(port)
    if text.isdigit():
        return int(text)
    return socket.getservbyname(text, "tcp")


@dataclass
class AddressBook:
    """Which (host, port) go to which service, and the placeholders handed out for names."""

    dial: dict[tuple[str, int], str]
    _by_name: dict[str, str] = field(default_factory=dict)
    _by_address: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_config(cls, dial: dict[str, str]) -> AddressBook:
        return cls({parse_address(key): service for key, service in dial.items()})

    def service_for(self, host: str, port: int) -> str | None:
        """The service a connection to (host, port) goes to, or None for the network."""
        host = host.lower()
        service = self.dial.get((host, port))
        if service is not None:
            return service
        if host.endswith(_SUFFIX) and len(host) > len(_SUFFIX):
            return host[: -len(_SUFFIX)]
        return None

    def answers_for(self, host: str, port: int) -> bool:
        """Whether the overlay resolves `host` (for `port`; 0 when the caller gave none)."""
        host = host.lower()
        if host.endswith(_SUFFIX) and len(host) > len(_SUFFIX):
            return True
        if port:
            return (host, port) in self.dial and not _is_literal(host)
        return any(name == host and not _is_literal(name) for name, _ in self.dial)

    def placeholder(self, host: str) -> str:
        """The stable placeholder IPv4 address for the overlay name `host`."""
        host = host.lower()
        with self._lock:
            address = self._by_name.get(host)
            if address is None:
                number = _FIRST + len(self._by_name)
                if number > _LAST:
                    raise socket.gaierror(socket.EAI_AGAIN, "umbra: no placeholder address left")
                address = str(ipaddress.IPv4Address(number))
                self._by_name[host] = address
                self._by_address[address] = host
            return address

    def name_of(self, address: str) -> str | None:
        """The overlay name a placeholder stands for (IPv4 or its IPv4-mapped IPv6 form)."""
        if address.startswith("::ffff:"):
            address = address[len("::ffff:") :]
        return self._by_address.get(address)

    def is_placeholder(self, address: str) -> bool:
        if address.startswith("::ffff:"):
            address = address[len("::ffff:") :]
        try:
            return ipaddress.IPv4Address(address) in PLACEHOLDER_NETWORK
        except ValueError:
            return False

    def resolve(
        self, host: str, port: int, *, family: int, type_: int, proto: int, flags: int
    ) -> list[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[object, ...]]]:
        """getaddrinfo's answer for an overlay name: one stream entry at its placeholder."""
        if type_ not in (0, socket.SOCK_STREAM) or proto not in (0, socket.IPPROTO_TCP):
            raise socket.gaierror(socket.EAI_SOCKTYPE, "umbra: overlay names carry streams only")
        address = self.placeholder(host)
        canonical = host if flags & socket.AI_CANONNAME else ""
        if family == socket.AF_INET6:
            sockaddr: tuple[object, ...] = (f"::ffff:{address}", port, 0, 0)
            return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, canonical, sockaddr)]
        if family not in (0, socket.AF_INET):
            raise socket.gaierror(socket.EAI_FAMILY, "umbra: overlay names are IP only")
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, canonical, (address, port))
        ]


def _is_literal(host: str) -> bool:
    """An IP literal resolves to itself; only names get placeholders."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
