"""ControllerClient against the in-process controller: every method, enrollment pinning,
errors as ControllerError."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.controller_harness import Harness, make_harness
from umbranet.client.controller import ControllerClient, ControllerError, Intercept
from umbranet.pki import verify_ticket
from umbranet.testing import LocalNetwork


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def test_admin_and_client_round_trip(h: Harness) -> None:
    async def main() -> None:
        async with ControllerClient(h.admin, transport=h.transport(h.admin)) as admin:
            assert (await admin.bundle()) == h.loaded.authority.bundle
            created = await admin.create_identity("alice", attributes=["eng"])
            assert created.identity.spiffe_id == "spiffe://demo.umbra/device/alice"
            service = await admin.create_service(
                "db",
                dial_attributes=["eng"],
                bind_attributes=["dbhost"],
                host_address="tcp://127.0.0.1:5432",
                intercepts=[Intercept("db.umbra", 5432)],
            )
            assert service.intercepts == [Intercept("db.umbra", 5432)]
            assert [s.name for s in await admin.list_services()] == ["db"]

            alice = await ControllerClient.enroll(created.enrollment_token, transport=h.transport())
            assert alice.name == "alice"
            assert alice.controller_url == h.loaded.authority.controller_url
            with pytest.raises(ControllerError) as caught:
                await ControllerClient.enroll(created.enrollment_token, transport=h.transport())
            assert (caught.value.code, caught.value.status) == ("token_used", 409)

            async with ControllerClient(alice, transport=h.transport(alice)) as client:
                me = await client.me()
                assert [(s.name, s.actions) for s in me.services] == [("db", ["dial"])]
                grant = await client.ticket("db", "dial")
                ticket = verify_ticket(grant.ticket, h.loaded.authority.bundle, h.clock())
                assert ticket.service == "db"
                with pytest.raises(ControllerError) as denied:
                    await client.ticket("db", "bind")
                assert (denied.value.code, denied.value.status) == ("not_authorized", 403)
                assert "dbhost" not in denied.value.message  # only a decision id
                decision = denied.value.message.split("decision ")[1].split(";")[0]
                assert "dbhost" in (await admin.decision(decision))["reason"]
                with pytest.raises(ControllerError) as forbidden:
                    await client.list_identities()
                assert forbidden.value.code == "admin_required"

            listed = {i.name: i for i in await admin.list_identities()}
            assert listed["alice"].enrolled
            assert (await admin.get_identity("alice")).attributes == ["eng"]
            assert not (await admin.disable_identity("alice")).enabled
            assert (await admin.enable_identity("alice")).enabled
            assert (await admin.new_enrollment("alice")).startswith("ue1.")
            await admin.delete_service("db")
            assert await admin.list_services() == []
            counters = await admin.metrics()
            assert counters['umbra_api_errors_total{code="token_used"}'] == 1

    asyncio.run(main())


def test_router_registration(h: Harness) -> None:
    async def main() -> None:
        async with ControllerClient(h.admin, transport=h.transport(h.admin)) as admin:
            created = await admin.create_router("r1")
            assert created.router.address is None
        identity = await ControllerClient.enroll(created.enrollment_token, transport=h.transport())
        async with ControllerClient(identity, transport=h.transport(identity)) as router:
            registered = await router.register_router("127.0.0.1:7443")
            assert registered.address == "127.0.0.1:7443"
            assert registered.last_seen == h.clock()
            assert [(r.name, r.address) for r in await router.routers()] == [
                ("r1", "127.0.0.1:7443")
            ]

    asyncio.run(main())


def test_renew_switches_to_the_new_certificate(h: Harness) -> None:
    alice = h.new_device("alice")

    async def main() -> None:
        # The transport is fixed to alice's first certificate, which stays valid as "previous".
        async with ControllerClient(alice, transport=h.transport(alice)) as client:
            assert await client.renew_if_due(h.clock()) is None
            h.clock.advance(timedelta(hours=13))
            renewed = await client.renew_if_due(h.clock())
            assert renewed is not None
            assert client.identity is renewed
            assert renewed.noise_private_key == alice.noise_private_key
            assert renewed.key_pem != alice.key_pem
            assert renewed.certificate.serial_number != alice.certificate.serial_number

    asyncio.run(main())


def test_enroll_refuses_a_controller_with_another_ca(h: Harness, tmp_path: Path) -> None:
    token = h.create_identity("alice")
    impostor = next(make_harness(tmp_path / "impostor"))
    try:

        async def main() -> None:
            with pytest.raises(ControllerError) as caught:
                await ControllerClient.enroll(token, transport=impostor.transport())
            assert caught.value.code == "ca_mismatch"

        asyncio.run(main())
    finally:
        impostor.loaded.db.dispose()
    # The token was never sent: it still works at the real controller.
    h.enroll(token)


def test_enroll_with_a_garbage_token_fails_locally() -> None:
    async def main() -> None:
        with pytest.raises(ControllerError) as caught:
            await ControllerClient.enroll("not a token")
        assert (caught.value.code, caught.value.status) == ("token_invalid", 0)

    asyncio.run(main())


def test_unreachable_controller(h: Harness) -> None:
    async def main() -> None:
        # Nothing listens on port 1 of loopback.
        unreachable = h.admin.__class__(
            name=h.admin.name,
            spiffe_id=h.admin.spiffe_id,
            key_pem=h.admin.key_pem,
            cert_pem=h.admin.cert_pem,
            bundle=h.admin.bundle,
            controller_url="https://127.0.0.1:1",
            noise_private_key=h.admin.noise_private_key,
        )
        async with ControllerClient(unreachable, request_timeout=5) as client:
            with pytest.raises(ControllerError) as caught:
                await client.bundle()
        assert (caught.value.code, caught.value.status) == ("unreachable", 0)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("route", "answer"),
    [
        ("/v1/me", {}),
        ("/v1/me", {"name": 5, "kind": "device", "spiffe_id": "x", "attributes": 7}),
        ("/v1/tickets", {"ticket": "t"}),
        # Wrong types inside otherwise complete answers: the shared schema rejects them.
        ("/v1/tickets", {"ticket": "t", "expires_at": "soon", "routers": []}),
        ("/v1/tickets", {"ticket": "t", "expires_at": "2026-01-01T00:00:00+00:00", "routers": 3}),
        (
            "/v1/me",
            {
                "name": "a",
                "kind": "device",
                "spiffe_id": "x",
                "attributes": [],
                "services": [{"name": "db", "actions": ["dial"], "intercepts": [{"host": 1}]}],
            },
        ),
    ],
)
def test_a_malformed_answer_is_a_bad_response_not_a_crash(
    route: str, answer: dict[str, Any], arun: Any
) -> None:
    identity = LocalNetwork().identity("alice")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if request.url.path == route else 404, json=answer)

    async def main() -> None:
        async with ControllerClient(identity, transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(ControllerError) as info:
                if route == "/v1/me":
                    await client.me()
                else:
                    await client.ticket("db", "dial")
            assert info.value.code == "bad_response"

    arun(main())


def test_the_client_reads_what_the_controller_renders(arun: Any) -> None:
    """Client and controller share the REST models: an answer the controller renders (here a
    `MeOut` with intercepts and overlay addresses) comes back from the client as the same
    value, defaults included."""
    from umbranet.schema import Intercept as SchemaIntercept
    from umbranet.schema import MeOut, ServiceActionsOut

    rendered = MeOut(
        name="alice",
        kind="device",
        spiffe_id="spiffe://demo.umbra/device/alice",
        attributes=["eng"],
        services=[
            ServiceActionsOut(
                name="db", actions=["dial"], intercepts=[SchemaIntercept(host="db.umbra", port=5)]
            ),
            ServiceActionsOut(name="web", actions=["bind"], host_address="tcp://127.0.0.1:80"),
        ],
        ipv4="100.64.0.2",
    )
    identity = LocalNetwork().identity("alice")

    def handler(request: httpx.Request) -> httpx.Response:
        body = rendered.model_dump(mode="json", exclude_defaults=True)
        return httpx.Response(200, json=body)

    async def main() -> None:
        async with ControllerClient(identity, transport=httpx.MockTransport(handler)) as client:
            me = await client.me()
        assert me == rendered
        assert me.services[1].intercepts == []  # left out on the wire, empty on our side
        assert me.ipv6 is None

    arun(main())
