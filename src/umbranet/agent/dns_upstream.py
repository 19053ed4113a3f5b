"""Asking an upstream resolver for the DNS stub, so that a forged answer is not taken for it.

An off-path attacker who can send UDP to this host can race the real resolver with answers
(the Kaminsky attack). A reply is accepted only if everything it could not know or guess
matches: it comes from the upstream's address *and port*, arrives on a socket opened for this
one query (a fresh kernel-chosen source port each time), carries the query id *we* chose at
random (not the client's, which the client may make predictable), and repeats the question
asked. Anything else is dropped, counted (``dns_spoof_dropped.<why>``) and the wait goes on
until the real answer or the timeout. `reply_problem` holds the rules and does no IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
import struct
from collections.abc import Callable
from typing import Any

from umbranet.agent import dnswire as dns

__all__ = ["Dropped", "ask_tcp", "ask_udp", "reply_problem", "same_address"]

Dropped = Callable[[str], None]
"""Told why each reply was dropped (``wrong_id``, ``wrong_question``, ``wrong_source``...)."""

Address = tuple[str, int]


def reply_problem(ident: int, question: dns.Question, reply: bytes) -> str | None:
    """Why `reply` is not the answer to query `ident` asking `question`; None if it is."""
    try:
        message = dns.parse_message(reply)
    except dns.DnsError:
        if len(reply) >= 12 and struct.unpack_from("!H", reply)[0] != ident:
            return "wrong_id"
        return "malformed"
    if not message.is_response:
        return "not_response"
    if message.id != ident:
        return "wrong_id"
    if len(message.questions) != 1:
        return "wrong_question"
    asked = message.questions[0]
    same_name = asked.name.rstrip(".").lower() == question.name.rstrip(".").lower()
    if not same_name or (asked.qtype, asked.qclass) != (question.qtype, question.qclass):
        return "wrong_question"
    return None


def same_address(one: Address, other: Address) -> bool:
    """Whether two (host, port) pairs name the same socket address (spellings differ)."""
    return _normal(one) == _normal(other)


async def ask_udp(
    upstream: Address, data: bytes, question: dns.Question, dropped: Dropped
) -> bytes:
    """Forward `data` over UDP from a fresh socket; the reply carries the client's own id."""
    ident = secrets.randbelow(0x10000)
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
    any_address = "::" if family == socket.AF_INET6 else "0.0.0.0"
    received: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue(maxsize=64)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Replies(received), local_addr=(any_address, 0), family=family
    )
    try:
        transport.sendto(struct.pack("!H", ident) + data[2:], upstream)
        while True:
            reply, source = await received.get()
            problem = (
                "wrong_source"
                if not same_address(source, upstream)
                else reply_problem(ident, question, reply)
            )
            if problem is None:
                return data[:2] + reply[2:]
            dropped(problem)
    finally:
        transport.close()


async def ask_tcp(
    upstream: Address, data: bytes, question: dns.Question, dropped: Dropped
) -> bytes:
    """Forward `data` over TCP; a reply that is not the answer fails this upstream (OSError)."""
    ident = secrets.randbelow(0x10000)
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        wire = struct.pack("!H", ident) + data[2:]
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        reply = await reader.readexactly(size)
    finally:
        writer.close()
    problem = reply_problem(ident, question, reply)
    if problem is not None:
        dropped(problem)
        raise OSError(f"upstream answered a different query ({problem})")
    return data[:2] + reply[2:]


class _Replies(asyncio.DatagramProtocol):
    """Queues what arrives on one query's socket; beyond the queue's bound it is dropped."""

    def __init__(self, queue: asyncio.Queue[tuple[bytes, Address]]) -> None:
        self._queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait((data, (str(addr[0]), int(addr[1]))))


def _normal(address: Address) -> Address:
    try:
        host = ipaddress.ip_address(address[0].split("%", 1)[0])
    except ValueError:
        return address[0].lower(), int(address[1])
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped is not None:
        host = host.ipv4_mapped
    return str(host), int(address[1])
