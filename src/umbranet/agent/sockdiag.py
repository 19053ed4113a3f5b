"""The owner of one TCP socket, asked of the kernel by its addresses (netlink sock_diag).

`peeruid` finds who is on the other end of a loopback connection by reading
``/proc/net/tcp``: the kernel formats a line for *every* TCP socket of the namespace, and a
benchmark's connect loop leaves thousands in TIME_WAIT, so each check costs milliseconds
and grows with the machine's traffic. sock_diag answers the same question for exactly one
socket: a ``SOCK_DIAG_BY_FAMILY`` request without the dump flag names the socket by its
four-tuple and the kernel looks it up in its hash table (as it would for an arriving
segment) and returns one ``inet_diag_msg`` carrying its uid. Unprivileged users may ask.

`encode_request` and `parse_response` are the message codec (no IO; Linux's
``<linux/inet_diag.h>`` layout, native byte order for the netlink header, network order for
ports and addresses); `query_owner_uid` is the one syscall pair. Anything unexpected
answers None and the caller falls back to the /proc tables.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

__all__ = ["encode_request", "parse_response", "query_owner_uid"]

Address = tuple[str, int]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
ALL_STATES = 0xFFFFFFFF

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2: family, protocol, ext, pad, states
_ENDS = struct.Struct("!HH16s16s")  # inet_diag_sockid: sport, dport, src, dst (big-endian)
_TAIL = struct.Struct("=III")  # inet_diag_sockid: interface, cookie[2]
_MESSAGE = struct.Struct("=BBBB")  # inet_diag_msg: family, state, timer, retrans
_COUNTERS = struct.Struct("=IIIII")  # inet_diag_msg after the id: expires, rq, wq, uid, inode
_ID_SIZE = _ENDS.size + _TAIL.size
REQUEST_SIZE = _HEADER.size + _REQUEST.size + _ID_SIZE


def encode_request(client: Address, server: Address, seq: int) -> bytes:
    """Ask for the socket whose local end is `client` and whose remote end is `server`.

    IPv4-mapped IPv6 addresses are asked as IPv4: the kernel matches a mapped IPv6 socket
    by its IPv4 addresses in the same table, so one spelling finds either kind.
    """
    local, remote = _ip(client[0]), _ip(server[0])
    family = socket.AF_INET if local.version == remote.version == 4 else socket.AF_INET6
    if family == socket.AF_INET6:
        local, remote = _as_v6(local), _as_v6(remote)
    header = _HEADER.pack(REQUEST_SIZE, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0)
    request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, ALL_STATES)
    ends = _ENDS.pack(client[1], server[1], _padded(local), _padded(remote))
    return header + request + ends + _TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)


def parse_response(data: bytes, seq: int) -> int | None:
    """The uid in the kernel's answer to request `seq`; None for no such socket or garbage."""
    if len(data) < _HEADER.size:
        return None
    length, kind, _, answered, _ = _HEADER.unpack_from(data)
    if answered != seq or length > len(data) or kind == NLMSG_ERROR:
        return None
    uid_at = _HEADER.size + _MESSAGE.size + _ID_SIZE
    if kind != SOCK_DIAG_BY_FAMILY or length < uid_at + _COUNTERS.size:
        return None
    _, _, _, uid, _ = _COUNTERS.unpack_from(data, uid_at)
    return int(uid)


def query_owner_uid(client: Address, server: Address, seq: int = 1) -> int | None:
    """One lookup: None where netlink is missing, refuses, or knows no such socket.

    The kernel answers a sock_diag request inside the send call, so the reply is queued
    before `send` returns and the non-blocking receive never has to wait.
    """
    try:
        request = encode_request(client, server, seq)
    except ValueError:
        return None
    family = getattr(socket, "AF_NETLINK", None)  # Linux only
    if family is None:
        return None
    try:
        with socket.socket(family, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
            sock.send(request)
            data = sock.recv(8192, socket.MSG_DONTWAIT)
    except OSError:
        return None
    return parse_response(data, seq)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)


def _padded(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return address.packed.ljust(16, b"\0")
