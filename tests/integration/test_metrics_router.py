"""The router's ``/metrics``, scraped over HTTP while real traffic flows through a real router.

Each test reads the numbers, makes something happen (a dial, a refused ticket), and reads them
again: what an operator's dashboard would see move.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from tests.integration.router_harness import (
    LIVENESS,
    Overlay,
    dial_payload,
    echo_round_trip,
    overlay,
    ticket,
)
from tests.scrape import Scrape
from umbranet.aio.metrics_listener import MetricsListener
from umbranet.pki.tickets import Action
from umbranet.router.metrics import serve_metrics
from umbranet.router.runner import run_router
from umbranet.testing import LocalNetwork
from umbranet.testing.rawlink import RawLink
from umbranet.wire import FrameType


@asynccontextmanager
async def scraped(network: LocalNetwork) -> AsyncIterator[tuple[Overlay, MetricsListener]]:
    async with overlay(network) as net, serve_metrics(net.router.statistics, "0") as listener:
        assert listener is not None
        yield net, listener


async def scrape(listener: MetricsListener) -> Scrape:
    async with httpx.AsyncClient(trust_env=False, timeout=LIVENESS) as http:
        response = await http.get(f"http://{listener.address}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape.parse(response.text)


def test_a_dial_moves_circuits_opened_and_the_open_gauges(network: LocalNetwork, arun: Any):
    async def main() -> None:
        async with scraped(network) as (net, listener):
            before = await scrape(listener)
            assert before.types["umbra_router_circuits_opened"] == "counter"
            assert before.value("umbra_router_links") == 1  # the echo host; clients link lazily
            assert before.value("umbra_router_bindings") == 1
            await echo_round_trip(net.client)
            after = await scrape(listener)
            opened = "umbra_router_circuits_opened_total"
            assert after.value(opened) == before.value(opened) + 1
            assert after.value("umbra_router_links") == 2  # the client's link stays up
            accepted = "umbra_router_links_accepted_total"
            assert after.value(accepted) == before.value(accepted) + 1

    arun(main())


def test_picks_show_how_each_dial_found_its_host(network: LocalNetwork, arun: Any):
    async def main() -> None:
        async with scraped(network) as (net, listener):
            before = await scrape(listener)
            picks = "umbra_router_terminator_picks_total"
            assert before.types["umbra_router_terminator_picks"] == "counter"
            await echo_round_trip(net.client)
            await echo_round_trip(net.client)
            after = await scrape(listener)
            # The first dial is placed by the strategy; the second opens inside the session
            # the first made, so it goes to the process holding that session.
            assert after.value(picks, how="smart") == before.value(picks, how="smart") + 1
            session = after.value(picks, how="session_host")
            assert session == before.value(picks, how="session_host") + 1
            assert after.value("umbra_router_terminator_failures_total") == 0

    arun(main())


def test_a_refused_ticket_is_counted_under_its_code(network: LocalNetwork, arun: Any):
    async def main() -> None:
        async with scraped(network) as (net, listener):
            before = await scrape(listener)
            assert not before.has("umbra_router_refused_total", code="ticket_expired")
            carol = network.identity("carol", attributes=("client",))
            past = datetime.now(UTC) - timedelta(hours=1)
            async with await RawLink.open(net.router.address, carol) as raw:
                await raw.hello()
                stale = ticket(network, carol, "echo", Action.DIAL, now=past)
                raw.send(FrameType.DIAL, 1, dial_payload(stale))
                await raw.expect(FrameType.RESET, 1)
            after = await scrape(listener)
            assert after.value("umbra_router_refused_total", code="ticket_expired") == 1
            assert after.value("umbra_router_circuits_opened_total") == before.value(
                "umbra_router_circuits_opened_total"
            )

    arun(main())


def test_relayed_bytes_and_frames_are_counted_per_direction(network: LocalNetwork, arun: Any):
    async def main() -> None:
        async with scraped(network) as (net, listener):
            before = await scrape(listener)
            await echo_round_trip(net.client, size=100_000)
            after = await scrape(listener)
            for direction in ("in", "out"):
                moved = after.value("umbra_router_bytes_total", direction=direction)
                assert moved >= before.value("umbra_router_bytes_total", direction=direction) + (
                    2 * 100_000
                )
                frames = after.value("umbra_router_frames_total", direction=direction)
                assert frames > before.value("umbra_router_frames_total", direction=direction)

    arun(main())


def test_the_listener_serves_only_get_metrics(network: LocalNetwork, arun: Any) -> None:
    async def main() -> None:
        async with scraped(network) as (_net, listener):
            async with httpx.AsyncClient(trust_env=False, timeout=LIVENESS) as http:
                base = f"http://{listener.address}"
                assert (await http.get(f"{base}/")).status_code == 404
                assert (await http.post(f"{base}/metrics")).status_code == 405
            # A client that sends garbage gets a 400; one that leaves early gets nothing; the
            # next scrape is served as before.
            host, _, port = listener.address.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")
            assert (await asyncio.wait_for(reader.read(), LIVENESS)).startswith(b"HTTP/1.1 400")
            writer.close()
            _reader, quitter = await asyncio.open_connection(host, int(port))
            quitter.write(b"GET /metr")
            quitter.close()
            assert (await scrape(listener)).value("umbra_router_bindings") == 1

    arun(main())


def test_router_run_serves_metrics_on_the_address_given(
    network: LocalNetwork, arun: Any, tmp_path: Path
) -> None:
    identity_path = tmp_path / "router.json"
    network.identity("r9", kind="router").save(identity_path)
    port = free_port()

    async def main() -> None:
        ready = asyncio.Event()
        run = run_router(
            identity_path, "127.0.0.1:0", ready=ready, metrics_listen=f"127.0.0.1:{port}"
        )
        task = asyncio.get_running_loop().create_task(run)
        try:
            await asyncio.wait_for(ready.wait(), LIVENESS)
            async with httpx.AsyncClient(trust_env=False, timeout=LIVENESS) as http:
                response = await http.get(f"http://127.0.0.1:{port}/metrics")
            scrape = Scrape.parse(response.text)
            assert scrape.value("umbra_router_links") == 0
            assert scrape.types["umbra_router_refused"] == "counter"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    arun(main())
