"""A service hosted by relaying each overlay stream to a server's Unix socket (a database or
cache with no TCP port), while a blocking client runs in a thread: what the tests of apps
patched onto the overlay (`monkeypatch`) all need around their client code."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import context, running_router
from umbranet.sdk.forward import relay
from umbranet.testing import LocalNetwork

__all__ = ["hosted_on_unix_socket"]

T = TypeVar("T")


def hosted_on_unix_socket(
    network: LocalNetwork,
    arun: Any,
    service: str,
    unix_socket: Path,
    client_side: Callable[[], T],
    *,
    host_name: str = "db-host",
) -> T:
    """Host `service` (bound by identities with attribute ``server``) by relaying its streams
    to `unix_socket`; run `client_side` in a thread and return what it returns."""

    async def main() -> T:
        async with running_router(network), context(network, host_name, "server") as host:
            listener = await host.listen(service).start()

            async def host_streams() -> None:
                async for stream in listener:
                    reader, writer = await asyncio.open_unix_connection(str(unix_socket))
                    asyncio.get_running_loop().create_task(relay(stream, reader, writer))

            hosting = asyncio.get_running_loop().create_task(host_streams())
            try:
                return await asyncio.to_thread(client_side)
            finally:
                hosting.cancel()
                await listener.close()

    result: T = arun(main())
    return result
