"""Revocation on a busy router, with real controller and router processes: one dialer holds
10,000 live (never-finished) DIALs to a raw host; disabling the dialer resets every one.

Before router-side chunking and deduplication the router sent all 20,001 grants in one
/v1/recheck, got 413 and retried forever: nothing was reset. The test prints the time from
`identity disable` to the last reset (a figure, not asserted).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from tests.conftest import free_port
from tests.integration.router_harness import dial_payload
from umbranet.client.controller import ControllerClient
from umbranet.pki import IdentityFile
from umbranet.quickstart import Quickstart
from umbranet.testing.rawlink import LinkClosed, RawLink
from umbranet.wire import ErrorCode, FrameType, encode_control

T = TypeVar("T")
LIVE = int(__import__("os").environ.get("UMBRA_LIVE", "10000"))

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    net = Quickstart(
        tmp_path_factory.mktemp("scale"),
        router_port=free_port(),
        controller_port=free_port(),
        say=lambda _m: None,
        # One dialer holds 10,000 circuits that never finish their handshake: beyond what a
        # router allows one identity by default (256 pending, 10 s), so this router allows it.
        router_args=["--max-pending-per-identity", "20000", "--handshake-timeout", "600"],
    )
    try:
        net.start_core()
        yield net
    finally:
        net.stop()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 240))


async def _ticket(identity: IdentityFile, action: str) -> str:
    async with ControllerClient(identity) as client:
        return (await client.ticket("big", action)).ticket


def test_disabling_a_dialer_resets_its_10000_live_circuits(network: Quickstart) -> None:
    _run(network.ensure_service("big", ["big-c"], ["big-h"]))
    host = IdentityFile.load(_run(network.enroll("big-host", ["big-h"])))
    dialer = IdentityFile.load(_run(network.enroll("big-client", ["big-c"])))
    address = f"127.0.0.1:{network.router_port}"

    async def main() -> tuple[int, float]:
        bind_ticket, dial_ticket = await _ticket(host, "bind"), await _ticket(dialer, "dial")
        async with (
            await RawLink.open(address, host) as host_link,
            await RawLink.open(address, dialer) as dial_link,
        ):
            await host_link.hello()
            host_link.send(
                FrameType.BIND, 1, encode_control({"ticket": bind_ticket, "service": "big"})
            )
            await host_link.expect(FrameType.BIND_OK)
            await dial_link.hello()
            arrived = 0

            async def host_reads() -> None:
                nonlocal arrived
                while True:  # the host never answers: every circuit stays pending
                    frame = await host_link.recv(timeout=200)
                    if frame.type == FrameType.CONNECT:  # a DIAL, as the host sees it
                        arrived += 1

            reader = asyncio.get_running_loop().create_task(host_reads())
            payload = dial_payload(dial_ticket, service="big")
            for n in range(LIVE):
                dial_link.send(FrameType.DIAL, 2 * n + 1, payload)
                if n % 500 == 499:
                    await dial_link.drain()
            await dial_link.drain()
            for _ in range(2000):  # bounded: until the host has seen every DIAL
                if arrived >= LIVE:
                    break
                await asyncio.sleep(0.05)
            assert arrived == LIVE
            started = time.perf_counter()
            async with network.admin() as admin:
                await admin.disable_identity("big-client")
            resets = 0
            try:
                while resets < LIVE:
                    frame = await dial_link.recv(timeout=60)
                    if frame.type == FrameType.RESET:
                        assert RawLink.error(frame)[0] is ErrorCode.REVOKED
                        resets += 1
            except LinkClosed:
                pass
            elapsed = time.perf_counter() - started
            reader.cancel()
            return resets, elapsed

    resets, elapsed = _run(main())
    assert resets == LIVE
    print(f"\nidentity disable -> {LIVE:,} live circuits reset: {elapsed:.2f} s")
