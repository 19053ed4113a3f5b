"""UDP flows: real UDP sockets on 127.0.0.1 at both ends, an in-memory stream between them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from umbranet.agent.stats import Counters
from umbranet.agent.udpflow import Deframer, UdpPort, frame, offload_udp, parse_udp_address
from umbranet.testing import eventually


class PipeEnd:
    """One end of an in-memory byte stream (the SDK stream's twin for these tests)."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self.peer: PipeEnd | None = None
        self.aborted: str | None = None
        self.eof_sent = False

    async def read(self, n: int = -1) -> bytes:
        item = await self.inbox.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def write(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.inbox.put_nowait(bytes(data))

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def write_eof(self) -> None:
        assert self.peer is not None
        self.eof_sent = True
        self.peer.inbox.put_nowait(b"")

    def abort(self, reason: str = "") -> None:
        assert self.peer is not None
        self.aborted = reason
        self.peer.inbox.put_nowait(ConnectionResetError(reason))


def pipe() -> tuple[PipeEnd, PipeEnd]:
    a, b = PipeEnd(), PipeEnd()
    a.peer, b.peer = b, a
    return a, b


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.transport.sendto(b"echo:" + data, addr)


poll = eventually  # a condition the flows reach on their own, within 30 s


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 50))
def test_deframing_any_split_gives_back_the_datagrams(datagrams: list[bytes], cut: int) -> None:
    data = b"".join(frame(d) for d in datagrams)
    deframer = Deframer()
    out: list[bytes] = []
    for i in range(0, len(data), cut):
        out.extend(deframer.feed(data[i : i + cut]))
    assert out == datagrams


def test_udp_addresses_parse() -> None:
    assert parse_udp_address("udp://127.0.0.1:5353") == ("127.0.0.1", 5353)
    for bad in ("tcp://127.0.0.1:53", "udp://127.0.0.1", "udp://h:0", "udp://h:99999"):
        with contextlib.suppress(ValueError):
            parse_udp_address(bad)
            raise AssertionError(bad)


def test_datagrams_cross_both_ways_one_stream_per_client() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        echo_port = echo.get_extra_info("sockname")[1]
        hosts: list[asyncio.Task[str]] = []

        async def dial(service: str) -> PipeEnd:
            assert service == "dns"
            client_end, host_end = pipe()
            address = f"udp://127.0.0.1:{echo_port}"
            hosts.append(loop.create_task(offload_udp(host_end, address, idle=0.5)))
            return client_end

        counters = Counters()
        port = UdpPort("dns", 53, dial, counters, idle=0.5)
        local = await port.start()
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            for index, sock in enumerate(clients):
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", local))
                for n in range(3):
                    await loop.sock_sendall(sock, f"{index}-{n}".encode())
                    reply = await asyncio.wait_for(loop.sock_recv(sock, 100), 15)
                    assert reply == f"echo:{index}-{n}".encode()
            assert len(hosts) == 2 and counters.get("udp_flows") == 2
            assert port.snapshot()["flows"] == 2
            # Both ends let an idle flow go quietly.
            await poll(lambda: port.snapshot()["flows"] == 0)
            assert [await h for h in hosts] == ["", ""]
        finally:
            for sock in clients:
                sock.close()
            await port.close()
            echo.close()

    run(body)


def test_a_refusing_host_port_aborts_the_stream() -> None:
    async def body() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        client_end, host_end = pipe()
        task = asyncio.get_running_loop().create_task(
            offload_udp(host_end, f"udp://127.0.0.1:{closed_port}", idle=30)
        )
        client_end.write(frame(b"anyone there?"))
        assert await task == "port unreachable"
        assert host_end.aborted is not None and "port unreachable" in host_end.aborted
        with contextlib.suppress(ConnectionResetError):
            await client_end.read()
            raise AssertionError("the client end should see a reset")

    run(body)


def test_a_failed_dial_is_counted_and_the_port_keeps_serving() -> None:
    async def body() -> None:
        attempts: list[str] = []

        async def dial(service: str) -> PipeEnd:
            attempts.append(service)
            raise OSError("no route")

        counters = Counters()
        port = UdpPort("dns", 53, dial, counters)
        local = await port.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"x", ("127.0.0.1", local))
            await poll(lambda: counters.get("dial_failed.OSError") == 1)
            await poll(lambda: port.snapshot()["flows"] == 0)
            sock.sendto(b"y", ("127.0.0.1", local))
            await poll(lambda: counters.get("dial_failed.OSError") == 2)
        await port.close()
        assert attempts == ["dns", "dns"]

    run(body)
