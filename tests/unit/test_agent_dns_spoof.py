"""The DNS stub's forwarder takes only the real upstream's answer (issue 9, item 24): a reply
from another port, with another id or for another question is dropped and counted, the real
one is used, and every forward leaves from a fresh source port with an id of the stub's own."""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from tests.unit.test_agent_dns_stub import ask_tcp, ask_udp, parsed, run
from umbranet.agent import dnswire as dns
from umbranet.agent.dns_stub import DnsStub
from umbranet.agent.dns_upstream import reply_problem
from umbranet.agent.stats import Counters

REAL = "192.0.2.80"
FORGED = "203.0.113.66"


def answer(query: dns.Message, address: str, ident: int | None = None, name: str = "") -> bytes:
    question = query.questions[0]
    asked = dns.Question(name or question.name, question.qtype, question.qclass)
    record = dns.a_record(asked.name, address, 60)
    forged_query = dns.Message(query.id if ident is None else ident, query.flags, (asked,))
    return dns.build_response(forged_query, answers=(record,), authoritative=False)


@dataclass
class SpoofingUpstream(asyncio.DatagramProtocol):
    """Before each real answer, three forgeries race it: one from another port, one with the
    wrong question, one with the wrong id. Records each query's source and id."""

    other: socket.socket
    sources: list[tuple[str, int]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, int]) -> None:
        query = dns.parse_message(data)
        self.sources.append((str(addr[0]), int(addr[1])))
        self.ids.append(query.id)
        self.other.sendto(answer(query, FORGED), addr)  # right id and question, wrong port
        self.transport.sendto(answer(query, FORGED, name="evil.example"), addr)
        self.transport.sendto(answer(query, FORGED, ident=query.id ^ 0x5A5A), addr)
        self.transport.sendto(answer(query, REAL), addr)


def test_forged_replies_are_dropped_and_counted_and_the_real_answer_is_used() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind(("127.0.0.1", 0))
            transport, upstream = await loop.create_datagram_endpoint(
                lambda: SpoofingUpstream(other), local_addr=("127.0.0.1", 0)
            )
            port = transport.get_extra_info("sockname")[1]
            stub = DnsStub(Counters(), [("127.0.0.1", port)], host="127.0.0.1", port=0)
            await stub.start()
            try:
                replies = [
                    parsed(await ask_udp(stub, dns.build_query(4000 + i, f"host{i}.example.org")))
                    for i in range(4)
                ]
            finally:
                await stub.close()
                transport.close()
        for i, reply in enumerate(replies):
            assert reply.id == 4000 + i  # the client's own id comes back
            assert reply.questions[0].name == f"host{i}.example.org"
            assert [a.data for a in reply.answers] == [socket.inet_aton(REAL)]
        counters = stub.counters
        assert counters.get("dns_spoof_dropped.wrong_question") == 4
        assert counters.get("dns_spoof_dropped.wrong_id") == 4
        # Every forgery is sent before the real answer, so each reaches the query's socket.
        assert counters.get("dns_spoof_dropped.wrong_source") == 4
        assert counters.get("dns_forwarded") == 4
        # Fresh source port per query, never the stub's own port; ids are the stub's.
        ports = {source[1] for source in upstream.sources}
        assert len(ports) > 1 and stub.port not in ports
        assert upstream.ids != [4000, 4001, 4002, 4003]

    run(body)


def test_a_tcp_reply_for_another_question_fails_that_upstream() -> None:
    async def body() -> None:
        async def lying(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            query = dns.parse_message(await reader.readexactly(size))
            reply = answer(query, FORGED, name="evil.example")
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(lying, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stub = DnsStub(Counters(), [("127.0.0.1", port)], host="127.0.0.1", port=0)
        await stub.start()
        try:
            reply = dns.parse_message(await ask_tcp(stub, dns.build_query(9, "example.org")))
        finally:
            await stub.close()
            server.close()
        assert reply.rcode == dns.SERVFAIL and not reply.answers
        assert stub.counters.get("dns_spoof_dropped.wrong_question") == 1

    run(body)


def test_reply_rules() -> None:
    question = dns.Question("Example.ORG.", dns.TYPE_A, dns.CLASS_IN)
    query = dns.Message(7, 0x0100, (question,))
    good = answer(query, REAL)
    assert reply_problem(7, dns.Question("example.org", dns.TYPE_A, dns.CLASS_IN), good) is None
    assert reply_problem(8, question, good) == "wrong_id"
    assert reply_problem(7, question, answer(query, REAL, name="other.org")) == "wrong_question"
    aaaa = dns.Question("example.org", 28, dns.CLASS_IN)
    assert reply_problem(7, aaaa, good) == "wrong_question"
    assert reply_problem(7, question, dns.build_query(7, "example.org")) == "not_response"
    assert reply_problem(7, question, b"\x00\x07junk") == "malformed"
