"""Network mode's relay link between refreshes: when its router goes away, the link moves to
the next router the last refresh ranked, the lost one tried last; when no router answers,
the next attempt waits (backoff). Real routers on loopback, a real WireGuard driver over a
UDP socket and a socketpair standing in for the TUN (no root needed)."""

from __future__ import annotations

import asyncio
import socket
from contextlib import AsyncExitStack
from pathlib import Path

from tests.conftest import running_router
from tests.unit.test_wireguard_driver import SocketPort
from umbranet.agent.config import TunSettings
from umbranet.agent.stats import Counters
from umbranet.agent.tunmode import TunMode
from umbranet.aio.wg_driver import WireGuardDriver
from umbranet.proto.wireguard import Device
from umbranet.testing import LocalNetwork, eventually


def test_a_lost_relay_link_moves_to_the_next_router_and_a_dead_set_backs_off(
    tmp_path: Path,
) -> None:
    network = LocalNetwork()
    identity = network.identity("dev-a", kind="device")
    counters = Counters()

    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        driver = WireGuardDriver(Device.for_identity(identity), sock, SocketPort())  # type: ignore[arg-type]
        driver.start()
        tun = TunMode(TunSettings(), tmp_path, identity, counters)
        tun.driver = driver
        try:
            async with AsyncExitStack() as first_stack, running_router(network, "r2") as second:
                first = await first_stack.enter_async_context(running_router(network, "r1"))
                routers = [first.address, second.address]
                await tun.use_relays(routers)
                assert tun.relay is not None and tun.relay.address == first.address
                await tun.keep_relay()  # live: nothing to do
                assert tun.relay.address == first.address
                await first_stack.aclose()  # r1 stops; the link sees it go
                await eventually(lambda: tun.relay is not None and not tun.relay.live, within=10)
                await tun.keep_relay()
                assert tun.relay is not None and tun.relay.live
                assert tun.relay.address == second.address
                assert counters.snapshot()["tun_relay_moved"] == 1
            # Both gone: one attempt, then none until the backoff has passed.
            await eventually(lambda: tun.relay is not None and not tun.relay.live, within=10)
            await tun.keep_relay()
            assert tun.relay is None
            unreachable = counters.snapshot()["tun_relay_unreachable"]
            assert unreachable == 2  # both routers tried once
            await tun.keep_relay()
            assert counters.snapshot()["tun_relay_unreachable"] == unreachable
        finally:
            if tun.relay is not None:
                tun.relay.close()
            driver.close()
            sock.close()

    asyncio.run(main())
