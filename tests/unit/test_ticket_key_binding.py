"""Tickets are bound to the certificate key that requested them (claim ``cnf``), routers
refuse them over a link with another certificate, and revoked keys reach routers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import running_router
from tests.controller_harness import Harness, make_harness, noise_proof
from umbranet.controller.events import EpochEvent
from umbranet.pki import generate_tls_key, load_chain, make_csr, verify_ticket
from umbranet.pki.tickets import KEY_BINDING_CLAIM, Action, certificate_key_fingerprint
from umbranet.router.admission import admit, link_key_fingerprint, revalidate
from umbranet.testing import LocalNetwork
from umbranet.testing.rawlink import RawLink
from umbranet.wire import ErrorCode, FrameType


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _service(h: Harness) -> None:
    body = {"name": "db", "dial_attributes": ["eng"], "bind_attributes": []}
    assert h.client(h.admin).post("/v1/services", json=body).status_code == 201


def _ticket(h: Harness, who: object) -> str:
    response = h.client(who).post("/v1/tickets", json={"service": "db", "action": "dial"})  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    token: str = response.json()["ticket"]
    return token


def test_tickets_name_the_keys_of_the_current_and_previous_certificate(h: Harness) -> None:
    _service(h)
    alice = h.new_device("alice", ["eng"])
    first_key = certificate_key_fingerprint(alice.certificate)
    ticket = verify_ticket(_ticket(h, alice), h.loaded.authority.bundle, h.clock())
    assert KEY_BINDING_CLAIM == "cnf"
    assert ticket.key_binding == (first_key,)
    # After a renewal both certificates are valid, so both keys are named (links made with
    # the old certificate keep working until they reconnect).
    csr = make_csr(generate_tls_key())
    body = {
        "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
        **noise_proof(h.client(), alice.noise_private_key, csr),
    }
    renewed = h.client(alice).post("/v1/renew", json=body).json()["cert_pem"]
    new_key = certificate_key_fingerprint(load_chain(renewed)[0])
    ticket = verify_ticket(_ticket(h, alice), h.loaded.authority.bundle, h.clock())
    assert ticket.key_binding == (new_key, first_key)


def test_a_fresh_ticket_is_refused_over_a_link_with_the_revoked_certificate(h: Harness) -> None:
    _service(h)
    old = h.new_device("alice", ["eng"])
    token = h.client(h.admin).post("/v1/identities/alice/revoke").json()["enrollment_token"]
    new = h.enroll(token)
    fresh = _ticket(h, new)
    bundle, now = h.loaded.authority.bundle, h.clock()
    # The thief holds the old certificate (still chain-valid) and a leaked fresh ticket.
    stolen = admit(
        fresh,
        peer_id=old.spiffe_id,
        service="db",
        action=Action.DIAL,
        bundle=bundle,
        now=now,
        peer_key=certificate_key_fingerprint(old.certificate),
    )
    assert (stolen.allowed, stolen.code) == (False, ErrorCode.TICKET_WRONG_KEY)
    owner = admit(
        fresh,
        peer_id=new.spiffe_id,
        service="db",
        action=Action.DIAL,
        bundle=bundle,
        now=now,
        peer_key=link_key_fingerprint(new.certificate.public_bytes(serialization.Encoding.DER)),
    )
    assert owner.allowed


def test_revocation_pushes_the_revoked_keys_to_routers(h: Harness) -> None:
    alice = h.new_device("alice")
    events = h.app.state.umbra.events

    async def run() -> EpochEvent:
        queue = events.subscribe()
        try:
            await asyncio.to_thread(h.client(h.admin).post, "/v1/identities/alice/revoke")
            return await asyncio.wait_for(queue.get(), 10)
        finally:
            events.unsubscribe(queue)

    event = asyncio.run(run())
    assert event.revoked_keys == (certificate_key_fingerprint(alice.certificate),)
    # Re-sent to every router that (re)connects, in `hello`.
    assert events.revoked_keys() == [certificate_key_fingerprint(alice.certificate)]


def test_a_ticket_never_extends_a_circuit_for_another_grant_or_an_older_expiry(
    h: Harness,
) -> None:
    _service(h)
    alice = h.new_device("alice", ["eng"])
    bundle = h.loaded.authority.bundle

    def admitted(token: str) -> object:
        return admit(
            token,
            peer_id=alice.spiffe_id,
            service="db",
            action=Action.DIAL,
            bundle=bundle,
            now=h.clock(),
        )

    first = admitted(_ticket(h, alice))
    assert first.ticket is not None  # type: ignore[attr-defined]
    h.clock.advance(timedelta(minutes=5))
    later = admitted(_ticket(h, alice))
    assert revalidate(first.ticket, later).allowed  # type: ignore[arg-type, attr-defined]
    assert not revalidate(later.ticket, first).allowed  # type: ignore[arg-type, attr-defined]


def test_the_router_closes_links_made_with_a_revoked_certificate(
    network: LocalNetwork, arun: object
) -> None:
    async def main() -> tuple[ErrorCode, int]:
        async with running_router(network) as router:
            victim = network.identity("victim", attributes=("client",))
            bystander = network.identity("bystander", attributes=("client",))
            async with (
                await RawLink.open(router.address, victim) as bad,
                await RawLink.open(router.address, bystander) as good,
            ):
                await bad.hello()
                await good.hello()

                async def nothing_denied(grants: list[tuple[str, str, str]]) -> dict[int, str]:
                    return {}

                revoked = [certificate_key_fingerprint(victim.certificate)]
                await router.apply_epoch(network.bump(), nothing_denied, None, revoked)
                frames = await bad.read_until_closed()
                goaway = [f for f in frames if f.type == FrameType.GOAWAY]
                code = RawLink.error(goaway[0])[0]
                for _ in range(100):  # bounded: the router forgets the closed link
                    if router.statistics()["links"] == 1:
                        break
                    await asyncio.sleep(0.02)
                assert not good.closed
                return code, router.statistics()["links"]

    code, links = arun(main())  # type: ignore[operator]
    assert code is ErrorCode.CERT_REVOKED
    assert links == 1
