"""A long stream keeps its grant current: before the cached dial ticket expires, the SDK
fetches a fresh one for services it has open streams of, so the controller (which re-checks
only grants with a current ticket) can confirm the stream at the next policy change."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import context, echo_forever, running_router
from umbranet.sdk import context as context_module
from umbranet.testing import LocalNetwork, eventually
from umbranet.testing.clock import FakeClock


def test_open_streams_keep_their_dial_grant_current(
    network: LocalNetwork, arun: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context_module, "GRANT_CHECK_INTERVAL", 0.05)

    async def main() -> None:
        async with running_router(network):
            host, client = context(network, "web", "server"), context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                stream = await client.dial("echo")
                ((key, first),) = [(k, g) for k, g in client._tickets.items() if k[1] == "dial"]
                # The cached ticket is about to expire, as it would be after ten minutes.
                client.clock = FakeClock(datetime.fromtimestamp(first.expires_at - 1, UTC))
                await eventually(lambda: client.counters.get("grants_refreshed", 0) >= 1)
                assert client._tickets[key].ticket != first.ticket
                stream.write(b"still here")
                stream.write_eof()
                assert await stream.read() == b"still here"

                # A service with no open stream is left alone.
                refreshed = client.counters["grants_refreshed"]
                stream.close()
                await eventually(
                    lambda: (
                        not client._connections
                        or not any(c.open_services() for c in client._connections.values())
                    )
                )
                second = client._tickets[key]
                client.clock = FakeClock(datetime.fromtimestamp(second.expires_at - 1, UTC))
                await asyncio.sleep(0.3)  # six checks: an open stream would have refreshed
                assert client.counters["grants_refreshed"] == refreshed
                assert client._tickets[key] is second
                server.cancel()

    arun(main())
