"""The agent's ``GET /metrics`` on its local API, scraped while intercepted connections go
through a real router (the agent's parts in one process: interceptor, hoster, local API)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import context, running_router
from tests.scrape import Scrape
from umbranet.agent.host import Hoster
from umbranet.agent.intercept import Interceptor, PortBook
from umbranet.agent.localapi import LocalApiServer, Request
from umbranet.agent.stats import Counters
from umbranet.agent.whois import WhoisTable
from umbranet.testing import LocalNetwork

LIVENESS = 30.0
EVENTS = "umbra_agent_events_total"


@dataclass
class Agent:
    interceptor: Interceptor
    hoster: Hoster
    socket: Path


async def _no_routes(request: Request) -> tuple[int, Any]:
    return 404, {"error": {"code": "not_found", "message": request.path}}


@asynccontextmanager
async def agent(network: LocalNetwork, tmp_path: Path) -> AsyncIterator[Agent]:
    """One agent's counters shared by its interceptor, its hoster and its local API."""
    async with running_router(network):
        host_ctx = context(network, "web", "server")
        client_ctx = context(network, "alice", "client")
        async with host_ctx, client_ctx:
            counters, whois = Counters(), WhoisTable()
            book = PortBook(tmp_path / "ports.json", {})
            api = LocalApiServer(tmp_path / "agent.sock", _no_routes, counters)
            await api.start()
            parts = Agent(
                Interceptor(client_ctx, book, whois, counters),
                Hoster(host_ctx, whois, counters),
                api.path,
            )
            try:
                yield parts
            finally:
                await parts.interceptor.close()
                await parts.hoster.close()
                await api.close()


async def scrape(socket: Path) -> Scrape:
    transport = httpx.AsyncHTTPTransport(uds=str(socket))
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=LIVENESS) as http:
        response = await http.get("http://umbra-agent/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape.parse(response.text)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _bound(hoster: Hoster, service: str) -> None:
    # The hoster exposes no event for "bound"; the caller bounds this with wait_for.
    while True:
        listener = hoster.hosted[service].listener
        if listener is not None and listener.bound_routers:
            return
        await asyncio.sleep(0.02)


def test_streams_and_refused_dials_move_the_agent_counters(
    network: LocalNetwork, tmp_path: Path
) -> None:
    async def main() -> None:
        app = await asyncio.start_server(_echo, "127.0.0.1", 0)
        app_port = app.sockets[0].getsockname()[1]
        async with app, agent(network, tmp_path) as parts:
            entry = await parts.interceptor.ensure("echo")
            before = await scrape(parts.socket)
            assert before.types["umbra_agent_events"] == "counter"

            # Nobody hosts echo yet: the dial is refused and counted with the router's code.
            reader, writer = await asyncio.open_connection("127.0.0.1", entry.port)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), LIVENESS)
            writer.close()
            refused = await scrape(parts.socket)
            code = {"event": "dial_failed", "code": "no_terminator"}
            assert refused.value(EVENTS, **code) == before.value(EVENTS, **code) + 1

            parts.hoster.ensure("echo", f"tcp://127.0.0.1:{app_port}")
            await asyncio.wait_for(_bound(parts.hoster, "echo"), LIVENESS)
            reader, writer = await asyncio.open_connection("127.0.0.1", entry.port)
            payload = os.urandom(100_000)
            writer.write(payload)
            assert await asyncio.wait_for(reader.readexactly(len(payload)), LIVENESS) == payload
            writer.close()
            carried = await scrape(parts.socket)
            dial = {"event": "dial_streams", "code": ""}
            host = {"event": "host_streams", "code": ""}
            assert carried.value(EVENTS, **dial) == refused.value(EVENTS, **dial) + 1
            assert carried.value(EVENTS, **host) == refused.value(EVENTS, **host) + 1
            # Each scrape is itself a local API request, counted like any other.
            requests = {"event": "api_requests", "code": ""}
            assert carried.value(EVENTS, **requests) == before.value(EVENTS, **requests) + 2

    asyncio.run(main())
