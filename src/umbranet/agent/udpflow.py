"""UDP through the overlay: one stream per flow, carrying length-prefixed datagrams.

A UDP *flow* is what a connected UDP socket sees: one client address talking to one
service port. The client side (`UdpPort`, root mode) receives the app's datagrams on a
loopback socket the kernel redirect points at, dials the service once per client address,
and writes each datagram to the stream as::

    +--------+--------+----------------------+
    | length (2, BE)  | datagram (length)    |
    +--------+--------+----------------------+

The host side (`offload_udp`, for services whose host address is ``udp://HOST:PORT``)
sends each datagram from a connected UDP socket of its own and frames the replies back.
Either side ends a flow after `UDP_IDLE` seconds without a datagram in either direction
(UDP has no close), and a host that answers with ICMP port unreachable aborts the stream
so the client side can count it. Datagrams that arrive while the stream is still being
dialed wait in a small queue; beyond it they are dropped and counted, like a full socket
buffer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from umbranet.agent.stats import Counters
from umbranet.sdk import UmbraError

__all__ = ["UDP_IDLE", "Deframer", "Duplex", "UdpPort", "frame", "offload_udp", "parse_udp_address"]

log = logging.getLogger("umbranet.agent")

UDP_IDLE = 60.0
MAX_FLOWS = 256
QUEUE = 64


class Duplex(Protocol):
    """The part of an SDK stream the UDP relays use (an in-memory twin can stand in)."""

    async def read(self, n: int = -1) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def write_eof(self) -> None: ...
    def abort(self, reason: str = "") -> None: ...


def frame(datagram: bytes) -> bytes:
    if len(datagram) > 0xFFFF:
        raise ValueError("a UDP datagram is at most 65535 bytes")
    return struct.pack("!H", len(datagram)) + datagram


class Deframer:
    """Bytes from a stream in, whole datagrams out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out = []
        while len(self._buffer) >= 2:
            size = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + size:
                break
            out.append(bytes(self._buffer[2 : 2 + size]))
            del self._buffer[: 2 + size]
        return out


def parse_udp_address(address: str) -> tuple[str, int]:
    """``udp://127.0.0.1:5353`` -> ("127.0.0.1", 5353); ValueError otherwise."""
    rest = address.removeprefix("udp://")
    host, sep, port = rest.rpartition(":")
    if not address.startswith("udp://") or not sep or not port.isdigit():
        raise ValueError(f"not a udp://HOST:PORT address: {address!r}")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port out of range in {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def offload_udp(stream: Duplex, address: str, idle: float = UDP_IDLE) -> str:
    """Host side of one flow; returns "" when it ended quietly, else why it failed."""
    loop = asyncio.get_running_loop()
    host, port = parse_udp_address(address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        clock = _Activity(loop.time())

        async def to_host() -> None:
            deframer = Deframer()
            while chunk := await stream.read(65536):
                for datagram in deframer.feed(chunk):
                    clock.touch(loop.time())
                    await loop.sock_sendall(sock, datagram)

        async def to_stream() -> None:
            while True:
                datagram = await loop.sock_recv(sock, 65535)
                clock.touch(loop.time())
                stream.write(frame(datagram))
                await stream.drain()

        failure = await _race(to_host(), to_stream(), clock.expired(idle))
    if failure:
        stream.abort(f"host address {address}: {failure}")
    else:
        stream.write_eof()
    return failure


@dataclass
class _Flow:
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE))
    task: asyncio.Task[None] | None = None


class UdpPort:
    """Client side: one loopback UDP socket for one (service, port); one stream per client."""

    def __init__(
        self,
        service: str,
        port: int,
        dial: Callable[[str], Awaitable[Duplex]],
        counters: Counters,
        idle: float = UDP_IDLE,
    ) -> None:
        self.service, self.port = service, port
        self._dial = dial
        self._counters = counters
        self._idle = idle
        self._flows: dict[tuple[str, int], _Flow] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self.local_port = 0

    async def start(self, host: str = "127.0.0.1") -> int:
        """Bind a fresh loopback socket; returns its port (the redirect's target)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Receiver(self), local_addr=(host, 0)
        )
        self._transport = transport
        self.local_port = int(transport.get_extra_info("sockname")[1])
        return self.local_port

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        tasks = [f.task for f in self._flows.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._flows.clear()

    def snapshot(self) -> dict[str, Any]:
        return {"service": self.service, "port": self.port, "flows": len(self._flows)}

    def received(self, data: bytes, source: tuple[str, int]) -> None:
        flow = self._flows.get(source)
        if flow is None:
            if len(self._flows) >= MAX_FLOWS:
                self._counters.add("udp_too_many_flows")
                return
            flow = _Flow()
            self._flows[source] = flow
            flow.task = asyncio.get_running_loop().create_task(self._run(source, flow))
        try:
            flow.queue.put_nowait(data)
        except asyncio.QueueFull:
            self._counters.add("udp_dropped")

    async def _run(self, source: tuple[str, int], flow: _Flow) -> None:
        try:
            try:
                stream = await self._dial(self.service)
            except (UmbraError, OSError, TimeoutError) as exc:
                code = exc.code if isinstance(exc, UmbraError) else type(exc).__name__
                self._counters.add(f"dial_failed.{code}")
                return
            self._counters.add("udp_flows")
            await self._carry(stream, source, flow)
        finally:
            self._flows.pop(source, None)

    async def _carry(self, stream: Duplex, source: tuple[str, int], flow: _Flow) -> None:
        loop = asyncio.get_running_loop()
        clock = _Activity(loop.time())

        async def to_stream() -> None:
            while True:
                datagram = await flow.queue.get()
                clock.touch(loop.time())
                stream.write(frame(datagram))
                await stream.drain()

        async def to_app() -> None:
            deframer = Deframer()
            while chunk := await stream.read(65536):
                for datagram in deframer.feed(chunk):
                    clock.touch(loop.time())
                    if self._transport is not None:
                        self._transport.sendto(datagram, source)

        try:
            failure = await _race(to_stream(), to_app(), clock.expired(self._idle))
        except asyncio.CancelledError:
            stream.abort("the agent stopped this UDP flow")
            raise
        if failure:
            self._counters.add("udp_flow_failed")
            stream.abort(failure)
        else:
            stream.write_eof()


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, port: UdpPort) -> None:
        self._port = port

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._port.received(data, (str(addr[0]), int(addr[1])))


class _Activity:
    """When the flow last carried a datagram; `expired` returns once it has been idle."""

    def __init__(self, now: float) -> None:
        self.last = now

    def touch(self, now: float) -> None:
        self.last = now

    async def expired(self, idle: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            remaining = self.last + idle - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)


async def _race(*coroutines: Awaitable[None]) -> str:
    """Run until the first finishes; "" if it ended normally, else the failure's text."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    error = next((t.exception() for t in done if t.exception() is not None), None)
    if error is None:
        return ""
    if isinstance(error, ConnectionRefusedError):
        return "port unreachable"
    return str(error) or type(error).__name__
