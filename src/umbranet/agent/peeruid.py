"""Which local user is on the other end of a loopback TCP connection, and may they use it.

A loopback listener of the agent dials services with the agent's identity, so whoever can
connect to it acts as that identity. TCP carries no credentials (SO_PEERCRED is for Unix
sockets), but on Linux the kernel lists every TCP socket with its owner's uid in
``/proc/net/tcp`` and ``/proc/net/tcp6``: the client's socket is the row whose local address
is the connection's peer address and whose remote address is ours. `owner_uid` finds it.

`LocalUsers` is the rule: by default only the agent's own uid; ``--allow-uid N`` adds users,
``--allow-any-user`` turns the check off. A connection whose owner cannot be found (the
client already closed, or no /proc) is refused: an unknown user is not an allowed one.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from umbranet.policy.verdict import Verdict

__all__ = ["PROC_TABLES", "LocalUsers", "owner_uid", "parse_table", "read_owner_uid"]

PROC_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class LocalUsers:
    """Who may use the agent's loopback listeners: its own uid, `allowed`, or anyone."""

    own_uid: int
    allowed: frozenset[int] = frozenset()
    any_user: bool = False

    def decide(self, uid: int | None) -> Verdict:
        if self.any_user:
            return Verdict.allow("any local user may connect (--allow-any-user)")
        if uid is None:
            return Verdict.deny("the connecting socket's owner could not be found")
        if uid == self.own_uid:
            return Verdict.allow(f"uid {uid} runs the agent")
        if uid in self.allowed:
            return Verdict.allow(f"uid {uid} is allowed (--allow-uid)")
        return Verdict.deny(f"uid {uid} is not the agent's user (uid {self.own_uid})")

    def to_json(self) -> dict[str, object]:
        return {"own_uid": self.own_uid, "allowed": sorted(self.allowed), "any": self.any_user}


def parse_table(text: str) -> Iterator[tuple[Address, Address, int]]:
    """(local, remote, uid) of every row of a /proc/net/tcp or tcp6 table; bad rows skipped."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            yield _address(fields[1]), _address(fields[2]), int(fields[7])
        except ValueError:
            continue


def owner_uid(client: Address, server: Address, tables: Iterable[str]) -> int | None:
    """The uid owning the socket at `client` connected to `server`, from table texts."""
    want = (_normal(client), _normal(server))
    # Only rows whose local port is the client's can match: skip the rest unparsed.
    suffix = f":{want[0][1]:04X}"
    for text in tables:
        for line in text.splitlines()[1:]:
            fields = line.split(maxsplit=8)
            if len(fields) < 8 or not fields[1].endswith(suffix):
                continue
            try:
                if (_address(fields[1]), _address(fields[2])) == want:
                    return int(fields[7])
            except ValueError:
                continue
    return None


def read_owner_uid(
    client: Address, server: Address, paths: Iterable[Path] = PROC_TABLES
) -> int | None:
    """`owner_uid` over the kernel's tables (None where they cannot be read)."""
    texts = []
    for path in paths:
        try:
            texts.append(path.read_text(encoding="ascii", errors="replace"))
        except OSError:
            continue
    return owner_uid(client, server, texts)


def _address(text: str) -> Address:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080): words of the address in host byte order."""
    host, sep, port = text.partition(":")
    if not sep or len(host) not in (8, 32):
        raise ValueError(f"not a /proc/net/tcp address: {text!r}")
    raw = b"".join(struct.pack("=I", int(host[i : i + 8], 16)) for i in range(0, len(host), 8))
    return _normal((str(ipaddress.ip_address(raw)), int(port, 16)))


def _normal(address: Address) -> Address:
    """One spelling per address: IPv4-mapped IPv6 as IPv4, scope ids dropped."""
    host = ipaddress.ip_address(address[0].split("%", 1)[0])
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    return str(host), int(address[1])
