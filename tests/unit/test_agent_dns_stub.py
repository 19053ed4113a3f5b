"""The DNS stub on 127.0.0.1 against a fake upstream resolver on 127.0.0.1 (no root needed)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from umbranet.agent import dnswire as dns
from umbranet.agent.dns_stub import DnsStub, decide
from umbranet.agent.stats import Counters
from umbranet.testing import eventually

NAMES = {"web.umbra": "100.64.0.7", "db.corp.internal": "100.64.0.9"}
OUTSIDE_ADDRESS = "192.0.2.80"


@dataclass
class FakeUpstream:
    """Answers every A query with 192.0.2.80 (or stays silent); records what it received."""

    silent: bool = False
    received: list[bytes] = field(default_factory=list)
    port: int = 0

    def answer(self, data: bytes) -> bytes:
        self.received.append(data)
        query = dns.parse_message(data)
        record = dns.a_record(query.questions[0].name, OUTSIDE_ADDRESS, 60)
        return dns.build_response(query, answers=(record,), authoritative=False)


class _UpstreamUdp(asyncio.DatagramProtocol):
    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self.fake.answer(data)
        if not self.fake.silent and self.transport is not None:
            self.transport.sendto(reply, addr)


@contextlib.asynccontextmanager
async def running(
    silent: bool = False, **options: Any
) -> AsyncIterator[tuple[DnsStub, FakeUpstream]]:
    loop = asyncio.get_running_loop()
    fake = FakeUpstream(silent)

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        reply = fake.answer(await reader.readexactly(size))
        writer.write(struct.pack("!H", len(reply)) + reply)
        await writer.drain()
        writer.close()

    for _attempt in range(10):  # the UDP port the kernel picks may be taken for TCP
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UpstreamUdp(fake), local_addr=("127.0.0.1", 0)
        )
        fake.port = transport.get_extra_info("sockname")[1]
        try:
            tcp_server = await asyncio.start_server(tcp, "127.0.0.1", fake.port)
            break
        except OSError:
            transport.close()
    else:
        raise RuntimeError("no port free for both UDP and TCP")
    stub = DnsStub(Counters(), [("127.0.0.1", fake.port)], host="127.0.0.1", port=0, **options)
    await stub.start()
    stub.set_names(NAMES)
    try:
        yield stub, fake
    finally:
        await stub.close()
        transport.close()
        tcp_server.close()


async def ask_udp(
    stub: DnsStub, data: bytes, source: str = "127.0.0.1", wait: float = 15.0
) -> bytes | None:
    """Send one datagram; the reply, or None if none came within `wait` seconds (a bound for
    answers; for expected drops a short wait can only make the test pass wrongly, never fail)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind((source, 0))
        await loop.sock_connect(sock, (stub.host, stub.port))
        await loop.sock_sendall(sock, data)
        try:
            async with asyncio.timeout(wait):
                return await loop.sock_recv(sock, 65535)
        except TimeoutError:
            return None


async def ask_tcp(stub: DnsStub, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(stub.host, stub.port)
    writer.write(struct.pack("!H", len(data)) + data)
    size = struct.unpack("!H", await reader.readexactly(2))[0]
    reply = await reader.readexactly(size)
    writer.close()
    return reply


wait_until = eventually  # a condition the stub reaches on its own, within 30 s


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def parsed(reply: bytes | None) -> dns.Message:
    assert reply is not None
    return dns.parse_message(reply)


def test_service_names_get_proxy_addresses_and_unknown_ones_nxdomain() -> None:
    async def body() -> None:
        async with running() as (stub, fake):
            reply = parsed(await ask_udp(stub, dns.build_query(1, "WEB.umbra.")))
            assert reply.rcode == dns.NOERROR
            assert [a.data for a in reply.answers] == [socket.inet_aton("100.64.0.7")]
            assert 0 < reply.answers[0].ttl <= 30
            other = parsed(await ask_udp(stub, dns.build_query(2, "db.corp.internal")))
            assert other.answers[0].data == socket.inet_aton("100.64.0.9")
            nodata = parsed(await ask_udp(stub, dns.build_query(3, "web.umbra", dns.TYPE_AAAA)))
            assert (nodata.rcode, nodata.answers) == (dns.NOERROR, ())
            nx = parsed(await ask_udp(stub, dns.build_query(4, "nope.umbra")))
            assert nx.rcode == dns.NXDOMAIN
            assert fake.received == []
            counters = stub.counters.snapshot()
            assert counters["dns_answered"] == 2 and counters["dns_nxdomain"] == 1

    run(body)


def test_other_names_are_forwarded_over_udp_and_tcp_and_answered_with_the_clients_id() -> None:
    async def body() -> None:
        async with running() as (stub, fake):
            query = dns.build_query(77, "example.org")
            reply = parsed(await ask_udp(stub, query))
            assert reply.id == 77
            assert reply.answers[0].data == socket.inet_aton(OUTSIDE_ADDRESS)
            # Unchanged but for the id: the forward carries one of the stub's own choosing.
            assert [r[2:] for r in fake.received] == [query[2:]]
            over_tcp = dns.parse_message(await ask_tcp(stub, dns.build_query(78, "example.net")))
            assert over_tcp.answers[0].data == socket.inet_aton(OUTSIDE_ADDRESS)
            known = dns.parse_message(await ask_tcp(stub, dns.build_query(79, "web.umbra")))
            assert known.answers[0].data == socket.inet_aton("100.64.0.7")
            assert stub.counters.get("dns_forwarded") == 2

    run(body)


def test_a_silent_upstream_gets_servfail() -> None:
    async def body() -> None:
        async with running(silent=True, forward_timeout=0.2) as (stub, _fake):
            reply = parsed(await ask_udp(stub, dns.build_query(5, "example.org")))
            assert reply.rcode == dns.SERVFAIL
            assert stub.counters.get("dns_servfail") == 1

    run(body)


def test_forwards_in_flight_are_bounded() -> None:
    async def body() -> None:
        async with running(silent=True, forward_timeout=5.0, max_inflight=1) as (stub, _fake):
            loop = asyncio.get_running_loop()
            first = loop.create_task(ask_udp(stub, dns.build_query(6, "slow.example")))
            await wait_until(lambda: stub.snapshot()["forwards_in_flight"] == 1)
            second = parsed(await ask_udp(stub, dns.build_query(7, "other.example")))
            assert second.rcode == dns.SERVFAIL
            assert stub.counters.get("dns_forward_overloaded") == 1
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first

    run(body)


def test_malformed_packets_are_answered_or_dropped_and_counted() -> None:
    async def body() -> None:
        async with running() as (stub, fake):
            garbage = struct.pack("!HH", 99, 0x0100) + b"\x00\x01" + b"\xff" * 15
            reply = parsed(await ask_udp(stub, garbage))
            assert (reply.id, reply.rcode) == (99, dns.FORMERR)
            assert await ask_udp(stub, b"\x01\x02\x03", wait=1) is None
            response = dns.build_response(dns.parse_message(dns.build_query(8, "x.umbra")))
            assert await ask_udp(stub, response, wait=1) is None
            after = parsed(await ask_udp(stub, dns.build_query(9, "web.umbra")))
            assert after.answers
            counters = stub.counters.snapshot()
            assert sum(v for k, v in counters.items() if k.startswith("dns_malformed.")) == 2
            assert counters["dns_unexpected_response"] == 1
            assert fake.received == []

    run(body)


def test_a_flooding_source_is_cut_and_others_are_still_answered() -> None:
    async def body() -> None:
        async with running(rate=0.001, burst=5) as (stub, _fake):
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.bind(("127.0.0.1", 0))
                await loop.sock_connect(sock, (stub.host, stub.port))
                for i in range(50):
                    await loop.sock_sendall(sock, dns.build_query(i, "web.umbra"))
                answers = 0
                with contextlib.suppress(TimeoutError):
                    while True:
                        async with asyncio.timeout(2):
                            await loop.sock_recv(sock, 65535)
                        answers += 1
            assert answers == 5
            assert stub.counters.get("dns_rate_limited") == 45
            other = parsed(await ask_udp(stub, dns.build_query(1, "web.umbra"), "127.0.0.2"))
            assert other.answers

    run(body)


def test_decide_never_forwards_names_under_the_suffix() -> None:
    for name in ("umbra", "a.b.umbra", "UMBRA."):
        outcome = decide(dns.build_query(1, name), NAMES)
        assert not hasattr(outcome, "query"), name
    notimp = decide(dns.build_message(dns.Message(3, 0x1000, ())), NAMES)
    assert dns.parse_message(notimp.data).rcode == dns.NOTIMP  # type: ignore[union-attr]
