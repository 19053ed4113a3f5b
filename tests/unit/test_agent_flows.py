"""Intercept and host in one process over a real router: bytes end to end, whois on both
ends, RST for a failed dial and for a refusing host address, stable port choice."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import context, free_port, running_router
from umbranet.agent.config import derived_port
from umbranet.agent.host import Hoster
from umbranet.agent.intercept import Interceptor, PortBook
from umbranet.agent.stats import Counters
from umbranet.agent.whois import WhoisTable
from umbranet.sdk import Context
from umbranet.testing import LocalNetwork, eventually


@dataclass
class Pair:
    client: Context
    interceptor: Interceptor
    hoster: Hoster
    whois: WhoisTable
    client_counters: Counters
    host_counters: Counters


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@asynccontextmanager
async def _agents(network: LocalNetwork, tmp_path: Path) -> AsyncIterator[Pair]:
    async with running_router(network):
        host_ctx = context(network, "web", "server")
        client_ctx = context(network, "alice", "client")
        async with host_ctx, client_ctx:
            whois, client_counters, host_counters = WhoisTable(), Counters(), Counters()
            book = PortBook(tmp_path / "ports.json", {})
            pair = Pair(
                client_ctx,
                Interceptor(client_ctx, book, whois, client_counters),
                Hoster(host_ctx, whois, host_counters),
                whois,
                client_counters,
                host_counters,
            )
            try:
                yield pair
            finally:
                await pair.interceptor.close()
                await pair.hoster.close()


async def _bound(hoster: Hoster, service: str) -> None:
    """Wait until the host side is bound at the router (bounded by the caller's wait_for)."""

    def bound() -> bool:
        listener = hoster.hosted[service].listener
        return listener is not None and bool(listener.bound_routers)

    await eventually(bound, within=60.0, interval=0.02)


def test_bytes_flow_end_to_end_and_whois_names_both_ends(
    network: LocalNetwork, tmp_path: Path
) -> None:
    async def main() -> None:
        seen: list[tuple[str, int]] = []

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(writer.get_extra_info("peername")[:2])
            await _echo(reader, writer)

        app_server = await asyncio.start_server(app, "127.0.0.1", 0)
        app_port = app_server.sockets[0].getsockname()[1]
        async with app_server, _agents(network, tmp_path) as agents:
            agents.hoster.ensure("echo", f"tcp://127.0.0.1:{app_port}")
            await asyncio.wait_for(_bound(agents.hoster, "echo"), 10)
            entry = await agents.interceptor.ensure("echo")
            assert entry.server is not None and entry.source == "derived"
            reader, writer = await asyncio.open_connection("127.0.0.1", entry.port)
            payload = os.urandom(2 << 20)
            writer.write(payload)
            await writer.drain()
            echoed = await reader.readexactly(len(payload))
            assert echoed == payload
            inbound = agents.whois.lookup(seen[0])
            outbound = agents.whois.lookup(writer.get_extra_info("sockname")[:2])
            assert inbound is not None and outbound is not None
            assert (inbound.peer.name, inbound.direction) == ("alice", "inbound")
            assert (outbound.peer.name, outbound.direction) == ("web", "outbound")
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            for _ in range(100):
                if not len(agents.whois):
                    break
                await asyncio.sleep(0.02)
            assert len(agents.whois) == 0
            assert json.loads((tmp_path / "ports.json").read_text()) == {"echo": entry.port}

    asyncio.run(main())


def test_refusing_host_address_and_failed_dial_reset_the_client(
    network: LocalNetwork, tmp_path: Path
) -> None:
    async def main() -> None:
        async with _agents(network, tmp_path) as agents:
            entry = await agents.interceptor.ensure("echo")
            reader, writer = await asyncio.open_connection("127.0.0.1", entry.port)
            with pytest.raises(ConnectionResetError):
                await reader.read()
            writer.close()
            assert agents.client_counters.get("dial_failed.no_terminator") == 1

            agents.hoster.ensure("echo", f"tcp://127.0.0.1:{free_port()}")
            await asyncio.wait_for(_bound(agents.hoster, "echo"), 10)
            reader, writer = await asyncio.open_connection("127.0.0.1", entry.port)
            writer.write(b"anyone?")
            with pytest.raises(ConnectionResetError):
                await reader.read()
            writer.close()
            assert agents.host_counters.get("host_refused") == 1
            assert "refused" in (agents.hoster.hosted["echo"].last_failure or "")
            resets = [k for k in agents.client_counters.snapshot() if "reset_by_overlay" in k]
            assert resets == ["dial_reset_by_overlay.cancelled"]

    asyncio.run(main())


def test_ports_prefer_override_then_record_then_intercept_then_derived(tmp_path: Path) -> None:
    book = PortBook(tmp_path / "ports.json", {"db": 6000})
    assert book.candidates("db", [5432]) == [(6000, "override")]
    assert book.candidates("web", [80])[:3] == [
        (80, "intercept"),
        (derived_port("web"), "derived"),
        (derived_port("web") + 1, "derived"),
    ]
    book.record("web", 18080)
    reloaded = PortBook(tmp_path / "ports.json", {})
    assert reloaded.candidates("web", [80])[:2] == [(18080, "recorded"), (80, "intercept")]


def test_a_taken_port_falls_through_but_a_taken_override_is_reported_then_bound_when_freed(
    network: LocalNetwork, tmp_path: Path
) -> None:
    async def main() -> None:
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        async with _agents(network, tmp_path) as agents:
            entry = await agents.interceptor.ensure("echo", [taken])
            assert entry.source == "derived" and entry.port != taken
            counters = Counters()
            interceptor = Interceptor(
                agents.client,
                PortBook(tmp_path / "other.json", {"echo": taken}),
                WhoisTable(),
                counters,
            )
            failed = await interceptor.ensure("echo")
            assert failed.server is None
            assert failed.error is not None and str(taken) in failed.error
            assert interceptor.snapshot()[0]["listen"] is None
            await interceptor.retry_unbound()
            assert failed.server is None
            assert counters.snapshot().get("listen_failed") == 1  # reported once, not per retry
            squatter.close()
            await interceptor.retry_unbound()
            assert interceptor.snapshot()[0]["listen"] == f"127.0.0.1:{taken}"
            assert failed.error is None
            _, writer = await asyncio.open_connection("127.0.0.1", taken)
            writer.close()
            await interceptor.close()

    asyncio.run(main())
