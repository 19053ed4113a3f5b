"""An endpoint's choice among routers (`sdk/routers.py`) and its tickets while the
controller is unreachable (`Context.ticket`)."""

from __future__ import annotations

import dataclasses

import pytest

from umbranet.pki.tickets import Action
from umbranet.sdk import Context, DialError, UmbraError
from umbranet.sdk.context import Grant
from umbranet.sdk.routers import RouterRanking
from umbranet.testing import LocalNetwork
from umbranet.testing.clock import FakeClock
from umbranet.testing.network import LocalControlPlane


@dataclasses.dataclass
class Measured:
    rtt_ms: float | None
    live: bool = True

    def statistics(self) -> dict[str, object]:
        return {"link": {"rtt_ms": self.rtt_ms}}


def test_routers_are_tried_by_measured_rtt_then_in_the_controllers_order() -> None:
    ranking = RouterRanking()
    links = {"b": Measured(4.0), "c": Measured(1.5), "d": Measured(None, live=False)}
    assert ranking.order(["a", "b", "c", "d", "e"], links) == ["c", "b", "a", "d", "e"]
    # Before its first keepalive answer a link counts half its connect time.
    ranking.connected("e", 0.002)
    links["e"] = Measured(None)
    assert ranking.order(["a", "b", "c", "e"], links) == ["e", "c", "b", "a"]
    assert ranking.snapshot(links)["e"] == 1.0


class Offline(LocalControlPlane):
    """The in-memory control plane that can be switched off (as a stopped controller)."""

    down = False

    async def grant(self, service: str, action: str, port: int | None = None) -> Grant:
        if Offline.down:
            raise UmbraError("unreachable", "cannot reach the controller")
        return await super().grant(service, action, port)


def test_a_cached_ticket_is_used_to_its_expiry_while_the_controller_is_unreachable(
    network: LocalNetwork, arun
) -> None:
    clock = FakeClock()
    identity = network.identity("app", attributes=("client",))
    context = Context(
        identity,
        clock=clock,
        control=lambda ident: Offline(network, ident),
        renew=False,
        report_posture=False,
    )

    async def main() -> None:
        Offline.down = False
        network.service("echo", dial=("client",), bind=("server",))
        grant = await context.ticket("echo", Action.DIAL)
        Offline.down = True
        # Inside its last minute a ticket is normally replaced; offline it is kept.
        clock.advance(grant.expires_at - clock.now().unix - 30)
        assert await context.ticket("echo", Action.DIAL) is grant
        assert context.counters["ticket_cached_offline"] == 1
        clock.advance(31)  # expired: no router would take it, so it is not handed out
        with pytest.raises(DialError) as refused:
            await context.ticket("echo", Action.DIAL)
        assert refused.value.code == "unreachable"
        Offline.down = False
        assert await context.ticket("echo", Action.DIAL) is not grant  # asked again
        await context.close()

    arun(main())
