"""A circuit lives as long as its ticket: once the ticket has expired the router re-checks the
grant with the controller; confirmed circuits go on, denied or unanswerable ones close."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import context, echo_forever
from umbranet.router import Router, RouterConfig
from umbranet.router.runner import revalidate_forever
from umbranet.router.server import REVALIDATED_LIFETIME
from umbranet.sdk import StreamReset
from umbranet.testing import LocalNetwork
from umbranet.testing.clock import FakeClock


async def _echo_once(stream: Any, data: bytes) -> None:
    stream.write(data)
    assert await stream.readexactly(len(data)) == data


@pytest.mark.parametrize("verdict", ["allowed", "denied", "unanswerable"])
def test_a_circuit_whose_ticket_expired_is_revalidated_or_closed(
    network: LocalNetwork, arun: Any, verdict: str
) -> None:
    async def main() -> None:
        clock = FakeClock()
        identity = network.identity("r1", kind="router")
        async with Router(RouterConfig(identity, port=0), clock=clock) as router:
            network.routers.append(router.address)
            host, client = context(network, "web", "server"), context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                stream = await client.dial("echo")
                await _echo_once(stream, b"before")
                asked: list[list[tuple[str, str, str]]] = []

                async def recheck(grants: list[tuple[str, str, str]]) -> dict[int, str]:
                    asked.append(grants)
                    if verdict == "unanswerable":
                        raise OSError("controller unreachable")
                    return {0: "alice may no longer dial echo"} if verdict == "denied" else {}

                assert await router.revalidate_expired(recheck) == 0  # nothing expired yet
                assert asked == []
                clock.step_wall(timedelta(minutes=11))  # past the 10-minute ticket
                closed = await router.revalidate_expired(recheck)
                assert asked[0] == [(client.identity.spiffe_id, "echo", "dial")]
                if verdict == "allowed":
                    assert closed == 0
                    await _echo_once(stream, b"after")
                    clock.step_wall(timedelta(seconds=REVALIDATED_LIFETIME - 60))
                    assert await router.revalidate_expired(recheck) == 0
                    assert len(asked) == 1  # its new lifetime has not run out yet
                else:
                    assert closed == 1
                    with pytest.raises(StreamReset) as info:
                        await asyncio.wait_for(stream.read(), 10)
                    code = "revoked" if verdict == "denied" else "recheck_failed"
                    assert info.value.code == code
                server.cancel()

    arun(main())


@pytest.mark.parametrize("outage_within_grace", [True, False])
def test_an_unreachable_controller_defers_revalidation_for_the_offline_grace_only(
    network: LocalNetwork, arun: Any, outage_within_grace: bool
) -> None:
    """The router's identity names a controller nobody answers at (a stopped controller):
    a circuit past its ticket stays up while the outage is within the grace, and closes
    (fail closed, `recheck_failed`) once the outage has outlasted it."""

    async def main() -> None:
        clock = FakeClock()
        identity = network.identity("r1", kind="router")
        async with Router(RouterConfig(identity, port=0), clock=clock) as router:
            network.routers.append(router.address)
            host, client = context(network, "web", "server"), context(network, "alice", "client")
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                stream = await client.dial("echo")
                await _echo_once(stream, b"before")
                clock.step_wall(timedelta(minutes=11))  # past the 10-minute ticket
                grace = 3600.0 if outage_within_grace else 0.0
                counters = router.switch.counters
                task = asyncio.get_running_loop().create_task(
                    revalidate_forever(router, interval=0.02, offline_grace=grace)
                )
                try:
                    if outage_within_grace:
                        for _ in range(500):  # bounded: a few deferred rounds
                            if counters["revalidation_deferred"] >= 3:
                                break
                            await asyncio.sleep(0.02)
                        assert counters["revalidation_deferred"] >= 3
                        await _echo_once(stream, b"during the outage")
                    else:
                        with pytest.raises(StreamReset) as info:
                            await asyncio.wait_for(stream.read(), 20)
                        assert info.value.code == "recheck_failed"
                        assert counters["revalidation_deferred"] == 0
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                server.cancel()

    arun(main())
