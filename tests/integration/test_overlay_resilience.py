"""Streams survive certificate renewal; hosts re-bind after their router restarts."""

from __future__ import annotations

import asyncio

from tests.conftest import context, echo_forever
from umbranet.router import Router, RouterConfig
from umbranet.testing import LocalNetwork


def test_renewal_keeps_live_streams_and_new_dials_use_the_new_certificate(
    network: LocalNetwork, arun
) -> None:
    async def main() -> tuple[bytes, str, str, int]:
        identity = network.identity("r1", kind="router")
        async with Router(RouterConfig(identity, port=0)) as router:
            network.routers.append(router.address)
            host = context(network, "web", "server")
            client = context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                stream = await client.dial("echo")
                stream.write(b"before ")
                before_serial = client.identity.certificate.serial_number
                await client.renew_now()
                await host.renew_now()
                stream.write(b"after")
                stream.write_eof()
                echoed = await stream.read()
                second = await client.dial("echo")
                second.write(b"x")
                await second.readexactly(1)
                server.cancel()
                return (
                    echoed,
                    str(before_serial),
                    str(client.identity.certificate.serial_number),
                    client.counters["renewals"],
                )

    echoed, before, after, renewals = arun(main())
    assert echoed == b"before after"
    assert before != after
    assert renewals == 1


def test_host_rebinds_after_its_router_restarts(network: LocalNetwork, arun) -> None:
    async def main() -> bytes:
        identity = network.identity("r1", kind="router")
        first = Router(RouterConfig(identity, port=0))
        await first.start()
        address = first.address
        port = int(address.rpartition(":")[2])
        network.routers.append(address)
        host = context(network, "web", "server")
        client = context(network, "alice", "client")
        async with host, client:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            await first.stop()
            async with Router(RouterConfig(identity, port=port)) as second:
                for _ in range(200):  # bounded: the host retries with backoff
                    if second.statistics()["bindings"]:
                        break
                    await asyncio.sleep(0.05)
                stream = await client.dial("echo")
                stream.write(b"again")
                stream.write_eof()
                data = await stream.read()
            server.cancel()
            return data

    assert arun(main()) == b"again"
