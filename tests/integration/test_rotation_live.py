"""A ticket-key rotation with live streams: streams opened before it keep flowing, endpoints
and routers take the new bundle from the event stream, and new dials, with tickets signed by
the new key, are admitted by the router and accepted by the host."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from tests.conftest import context, echo_forever, running_router
from umbranet.pki import verify_ticket
from umbranet.testing import LocalNetwork, eventually


def test_a_ticket_key_rotation_keeps_live_streams_and_new_dials_work(
    network: LocalNetwork, arun: Any
) -> None:
    async def main() -> None:
        async with running_router(network) as router:
            host, client = context(network, "web", "server"), context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                live = await client.dial("echo")
                live.write(b"before")
                assert await live.readexactly(6) == b"before"
                old_key = network.signer.key_id

                new = network.rotate_ticket_key()
                # The router follows the controller's events the same way (router/runner.py).
                router.renew(router.identity.with_bundle(network.bundle))
                for side in (host, client):
                    await eventually(lambda s=side: s.counters.get("bundle_refreshed", 0) >= 1)
                    assert side.identity.bundle.version == network.bundle.version

                live.write(b"during")
                assert await live.readexactly(6) == b"during"
                fresh = await client.dial("echo")
                grant = client._tickets[("echo", "dial", None)]
                ticket = verify_ticket(grant.ticket, network.bundle, datetime.now(UTC))
                assert ticket.key_id == new.key_id != old_key
                fresh.write(b"new key")
                fresh.write_eof()
                assert await fresh.read() == b"new key"
                live.write(b"after")
                live.write_eof()
                assert await live.read() == b"after"
                server.cancel()

    arun(main())
