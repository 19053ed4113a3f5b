"""The root mode's DNS stub: intercept names resolve to proxy addresses, the rest goes upstream.

The agent points ``/etc/resolv.conf`` at this stub (UDP and TCP, default ``127.0.0.153:53``:
inside 127/8 so it is reachable only from this host, and clear of ``127.0.0.1`` where
dnsmasq and friends listen and of systemd-resolved's ``127.0.0.53``). For each query:

- a name of a service this identity may dial (``web.umbra``, an intercept name such as
  ``db.corp.internal``, a ``--dns-name``): an A record with the service's proxy address and
  a short TTL (access can be withdrawn); AAAA and other types get NODATA (no IPv6 proxy),
  except for names network mode also gives an IPv6 overlay address (`set_names6`);
- any other name under the intercept suffix (``nope.umbra``): NXDOMAIN, never forwarded,
  so made-up names do not leak to the upstream resolver;
- everything else: forwarded to the upstream resolvers the agent replaced, one after the
  other, each with a timeout; SERVFAIL if none answers. The forward carries an id of our own
  and a fresh source port, and only a reply from the upstream's address and port, with that
  id and the same question, is taken (`dns_upstream`); forged ones are dropped and counted.

Bad input is answered or dropped, and counted (``dns_*`` counters), and harms no other
client: an unreadable query gets FORMERR if it carries an id (dropped otherwise), each source
address has a token bucket, forwards in flight are bounded (SERVFAIL beyond), TCP
connections are bounded and time out when idle. `decide` holds the rules and does no IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from umbranet.agent import dnswire as dns
from umbranet.agent.dns_upstream import Dropped, ask_tcp, ask_udp
from umbranet.agent.stats import Counters

__all__ = [
    "DEFAULT_STUB_ADDRESS",
    "DEFAULT_SUFFIX",
    "Answer",
    "DnsStub",
    "Drop",
    "Forward",
    "decide",
    "normalise_name",
]

log = logging.getLogger("umbranet.agent.dns")

DEFAULT_STUB_ADDRESS = "127.0.0.153"
DEFAULT_SUFFIX = "umbra"
ANSWER_TTL = 5
FORWARD_TIMEOUT = 2.0
MAX_INFLIGHT = 128
MAX_TCP_CONNECTIONS = 64
TCP_IDLE = 10.0
# Per source address: a resolver library sends a handful of queries per name; a flood from
# one client is cut at this rate and cannot use up the forwards others need.
RATE_PER_SECOND = 200.0
BURST = 400.0
_MAX_SOURCES = 4096

# How one forward asks one upstream: over UDP or over TCP (see `dns_upstream`).
_Ask = Callable[[tuple[str, int], bytes, dns.Question, Dropped], Awaitable[bytes]]

_BIND_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Answer:
    """Send `data` back; `kind` names the counter."""

    data: bytes
    kind: str


@dataclass(frozen=True, slots=True)
class Forward:
    query: dns.Message


@dataclass(frozen=True, slots=True)
class Drop:
    code: str


def normalise_name(name: str) -> str:
    """Names compare case-insensitively and without the root's trailing dot."""
    return name.rstrip(".").lower()


def decide(
    data: bytes,
    names: Mapping[str, str],
    suffix: str = DEFAULT_SUFFIX,
    ttl: int = ANSWER_TTL,
    names6: Mapping[str, str] | None = None,
) -> Answer | Forward | Drop:
    """What to do with one query; `names` maps normalised names to IPv4 addresses, `names6`
    (network mode's peers) to IPv6 ones."""
    try:
        query = dns.parse_message(data)
    except dns.DnsError as exc:
        reply = dns.build_error_header(data, dns.FORMERR)
        return Answer(reply, f"malformed.{exc.code}") if reply else Drop(f"malformed.{exc.code}")
    if query.is_response:
        return Drop("unexpected_response")
    if query.opcode != 0:
        return Answer(dns.build_response(query, dns.NOTIMP, authoritative=False), "notimp")
    if len(query.questions) != 1:
        return Answer(dns.build_response(query, dns.FORMERR, authoritative=False), "formerr")
    question = query.questions[0]
    name = normalise_name(question.name)
    address = names.get(name)
    address6 = names6.get(name) if names6 else None
    if address is not None or address6 is not None:
        if question.qclass == dns.CLASS_IN:
            if question.qtype == dns.TYPE_A and address is not None:
                record = dns.a_record(question.name, address, ttl)
                return Answer(dns.build_response(query, answers=(record,)), "answered")
            if question.qtype == dns.TYPE_AAAA and address6 is not None:
                record = dns.aaaa_record(question.name, address6, ttl)
                return Answer(dns.build_response(query, answers=(record,)), "answered")
        return Answer(dns.build_response(query), "nodata")
    if name == suffix or name.endswith("." + suffix):
        return Answer(dns.build_response(query, dns.NXDOMAIN), "nxdomain")
    return Forward(query)


class DnsStub:
    """The UDP and TCP servers around `decide`, with forwarding, bounds and counters."""

    def __init__(
        self,
        counters: Counters,
        upstreams: Sequence[tuple[str, int]],
        *,
        host: str = DEFAULT_STUB_ADDRESS,
        port: int = 53,
        suffix: str = DEFAULT_SUFFIX,
        forward_timeout: float = FORWARD_TIMEOUT,
        max_inflight: int = MAX_INFLIGHT,
        rate: float = RATE_PER_SECOND,
        burst: float = BURST,
    ) -> None:
        self.counters = counters
        self.upstreams = list(upstreams)
        self.host, self.port = host, port
        self.suffix = normalise_name(suffix)
        self.forward_timeout = forward_timeout
        self.max_inflight = max_inflight
        self._names: dict[str, str] = {}
        self._names6: dict[str, str] = {}
        self._buckets = _Buckets(rate, burst)
        self._inflight = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_connections = 0

    def set_names(self, names: Mapping[str, str]) -> None:
        """Replace the intercept table: name -> IPv4 proxy address."""
        self._names = {normalise_name(n): a for n, a in names.items()}

    def set_names6(self, names: Mapping[str, str]) -> None:
        """Replace the IPv6 table (network mode): name -> IPv6 overlay address."""
        self._names6 = {normalise_name(n): a for n, a in names.items()}

    async def start(self) -> None:
        """Bind UDP, then TCP on the same port. With port 0 the kernel picks the UDP port,
        which a TCP socket may already hold: then try another (a few times)."""
        loop = asyncio.get_running_loop()
        wanted = self.port
        for attempt in range(_BIND_ATTEMPTS):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, wanted)
            )
            port = int(transport.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(
                    self._tcp_client, self.host, port, reuse_address=True
                )
            except OSError as exc:
                transport.close()
                if wanted != 0 or exc.errno != errno.EADDRINUSE or attempt == _BIND_ATTEMPTS - 1:
                    raise
                continue
            except BaseException:
                transport.close()
                raise
            self._udp, self.port = transport, port
            break
        log.info("DNS stub on %s:%d (suffix .%s)", self.host, self.port, self.suffix)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def snapshot(self) -> dict[str, Any]:
        return {
            "listen": f"{self.host}:{self.port}",
            "suffix": self.suffix,
            "upstreams": [f"{h}:{p}" for h, p in self.upstreams],
            "names": dict(sorted(self._names.items())),
            "names6": dict(sorted(self._names6.items())),
            "forwards_in_flight": self._inflight,
        }

    # -- one query ----------------------------------------------------------------------------

    def _admit(self, source: str) -> bool:
        if self._buckets.take(source, asyncio.get_running_loop().time()):
            return True
        self.counters.add("dns_rate_limited")
        return False

    def _udp_query(self, data: bytes, source: tuple[str, int]) -> None:
        if self._udp is None or not self._admit(source[0]):
            return
        outcome = decide(data, self._names, self.suffix, names6=self._names6)
        if isinstance(outcome, Drop):
            self.counters.add(f"dns_{outcome.code}")
        elif isinstance(outcome, Answer):
            self.counters.add(f"dns_{outcome.kind}")
            self._udp.sendto(outcome.data, source)
        elif self._inflight >= self.max_inflight:
            self.counters.add("dns_forward_overloaded")
            self._udp.sendto(_servfail(outcome.query), source)
        else:
            self._inflight += 1
            self._spawn(self._udp_forward(outcome.query, data, source))

    async def _udp_forward(self, query: dns.Message, data: bytes, source: tuple[str, int]) -> None:
        try:
            reply = await self._forward(query, data, ask_udp)
        finally:
            self._inflight -= 1
        if self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(reply, source)

    async def _forward(self, query: dns.Message, data: bytes, ask: _Ask) -> bytes:
        for upstream in self.upstreams:
            try:
                async with asyncio.timeout(self.forward_timeout):
                    reply = await ask(upstream, data, query.questions[0], self._dropped)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                self.counters.add("dns_upstream_failed")
                continue
            self.counters.add("dns_forwarded")
            return reply
        self.counters.add("dns_servfail")
        return _servfail(query)

    def _dropped(self, why: str) -> None:
        self.counters.add(f"dns_spoof_dropped.{why}")

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_connections >= MAX_TCP_CONNECTIONS:
            self.counters.add("dns_tcp_refused")
            writer.transport.abort()
            return
        self._tcp_connections += 1
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        try:
            while True:
                try:
                    async with asyncio.timeout(TCP_IDLE):
                        size = struct.unpack("!H", await reader.readexactly(2))[0]
                        data = await reader.readexactly(size)
                except (TimeoutError, asyncio.IncompleteReadError, OSError):
                    return
                if not self._admit(source):
                    return
                reply = await self._tcp_answer(data)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except OSError:
            return
        finally:
            self._tcp_connections -= 1
            writer.close()

    async def _tcp_answer(self, data: bytes) -> bytes | None:
        outcome = decide(data, self._names, self.suffix, names6=self._names6)
        if isinstance(outcome, Drop):
            self.counters.add(f"dns_{outcome.code}")
            return None
        if isinstance(outcome, Answer):
            self.counters.add(f"dns_{outcome.kind}")
            return outcome.data
        if self._inflight >= self.max_inflight:
            self.counters.add("dns_forward_overloaded")
            return _servfail(outcome.query)
        self._inflight += 1
        try:
            return await self._forward(outcome.query, data, ask_tcp)
        finally:
            self._inflight -= 1

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _servfail(query: dns.Message) -> bytes:
    return dns.build_response(query, dns.SERVFAIL, authoritative=False)


class _Buckets:
    """A token bucket per source address, bounded in number (oldest forgotten first)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, source: str, now: float) -> bool:
        tokens, last = self._state.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._state[source] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._state) > _MAX_SOURCES:
            del self._state[next(iter(self._state))]
        return allowed


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, stub: DnsStub) -> None:
        self._stub = stub

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._stub._udp_query(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        self._stub.counters.add("dns_udp_error")
