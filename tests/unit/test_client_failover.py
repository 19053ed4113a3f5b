"""Client failover between controller replicas (`client.transport.Failover`): a replica
that cannot be reached or answers 503 is skipped, the one that answers leads afterwards for
every client of the process, a change that may have been applied is never sent twice, and
the replica list comes from the controllers (`ReplicaDirectory`, ``GET /v1/controllers``)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.controller_harness import Harness, make_harness
from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.client.transport import (
    DOWN_SECONDS,
    ControllerDirectory,
    directory,
    may_fail_over,
)
from umbranet.controller.replicas import STALE, ReplicaDirectory
from umbranet.controller.store.cluster_models import ControllerReplica

DEAD = "https://dead.example:1"
SICK = "https://sick.example:1"
FLAKY = "https://flaky.example:1"


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    directory.forget()
    yield from make_harness(tmp_path)
    directory.forget()


class Replicas(httpx.AsyncBaseTransport):
    """The harness's app behind every host, except: `DEAD` refuses connections, `SICK`
    answers 503 (no database), `FLAKY` breaks the connection after the request is sent."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.seen: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.seen.append(f"{origin} {request.method} {request.url.path}")
        if origin == DEAD:
            raise httpx.ConnectError("connection refused", request=request)
        if origin == SICK:
            body = {"error": {"code": "database_unavailable", "message": "down"}}
            return httpx.Response(503, json=body, request=request)
        if origin == FLAKY:
            raise httpx.ReadError("connection reset", request=request)
        return await self.inner.handle_async_request(request)


def test_requests_move_past_a_dead_and_a_sick_replica(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = h.admin.controller_url
    monkeypatch.setenv("UMBRA_CONTROLLERS", f"{SICK},{live}")
    admin = dataclasses.replace(h.admin, controller_url=DEAD)
    replicas = Replicas(h.transport(h.admin))

    async def main() -> None:
        async with ControllerClient(admin, transport=replicas) as client:
            created = await client.create_identity("alice")  # a POST: not sent before
            assert created.identity.name == "alice"
        assert [s.split()[0] for s in replicas.seen] == [DEAD, SICK, live]
        # The next client of this process starts at the replica that answered.
        replicas.seen.clear()
        async with ControllerClient(admin, transport=replicas) as client:
            assert "alice" in [i.name for i in await client.list_identities()]
        assert replicas.seen[0].startswith(live)

    asyncio.run(main())
    assert directory.failovers == 2


def test_a_change_that_may_have_been_applied_is_not_sent_again(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UMBRA_CONTROLLERS", h.admin.controller_url)
    admin = dataclasses.replace(h.admin, controller_url=FLAKY)
    replicas = Replicas(h.transport(h.admin))

    async def main() -> None:
        async with ControllerClient(admin, transport=replicas) as client:
            with pytest.raises(ControllerError) as caught:
                await client.create_identity("bob")
            assert caught.value.code == "unreachable"
            assert len(replicas.seen) == 1  # not repeated on the other replica
            # A read (and a ticket-like repeatable POST) does move on.
            assert await client.list_identities() is not None
            assert replicas.seen[-1].startswith(h.admin.controller_url)

    asyncio.run(main())


def test_a_failed_replica_is_tried_last_for_a_while() -> None:
    now = [0.0]
    book = ControllerDirectory(clock=lambda: now[0])
    book.learn("td", ["https://a:1", "https://b:1", "http://plain:1", 7])
    assert book.candidates("td", "https://a:1") == ["https://a:1", "https://b:1"]
    book.failed("td", "https://a:1")
    assert book.candidates("td", "https://a:1") == ["https://b:1", "https://a:1"]
    now[0] = DOWN_SECONDS + 1  # it may be back: its clients try it first again
    assert book.candidates("td", "https://a:1") == ["https://a:1", "https://b:1"]
    book.failed("td", "https://b:1")
    book.worked("td", "https://b:1")
    assert book.candidates("td", "https://b:1")[0] == "https://b:1"


def test_what_may_fail_over() -> None:
    refused = ControllerError("unreachable", "x", 0, sent=False)
    broken = ControllerError("unreachable", "x", 0)
    assert may_fail_over(refused, "POST", "/v1/identities")
    assert may_fail_over(ControllerError("database_unavailable", "x", 503), "POST", "/v1/enroll")
    assert not may_fail_over(broken, "POST", "/v1/identities")
    assert may_fail_over(broken, "POST", "/v1/tickets")
    assert may_fail_over(broken, "GET", "/v1/identities")
    assert not may_fail_over(ControllerError("http_500", "x", 500), "POST", "/v1/services")
    assert not may_fail_over(ControllerError("not_authorized", "x", 403), "POST", "/v1/tickets")


def test_the_controller_lists_live_replicas_and_clients_learn_them(h: Harness) -> None:
    db, clock = h.loaded.db, h.clock
    here = ReplicaDirectory(db, "https://ctl-a.example:8443", clock)
    other = ReplicaDirectory(db, "https://ctl-b.example:8443", clock)
    gone = ReplicaDirectory(db, "https://ctl-c.example:8443", clock)
    gone.heartbeat()
    clock.advance(timedelta(seconds=STALE + 1))  # c stopped heartbeating
    other.heartbeat()
    assert here.heartbeat() == ["https://ctl-a.example:8443", "https://ctl-b.example:8443"]
    h.app.state.umbra.replicas = here

    async def main() -> list[str]:
        async with ControllerClient(h.admin, transport=h.transport(h.admin)) as client:
            return await client.controllers()

    assert asyncio.run(main()) == ["https://ctl-a.example:8443", "https://ctl-b.example:8443"]
    candidates = directory.candidates(h.admin.trust_domain, h.admin.controller_url)
    # Its own URL first (clients spread over the replicas that enrolled them), then the list.
    assert candidates == [
        h.admin.controller_url,
        "https://ctl-a.example:8443",
        "https://ctl-b.example:8443",
    ]
    other.stop()  # a clean stop removes its row at once
    assert here.heartbeat() == ["https://ctl-a.example:8443"]
    clock.advance(timedelta(days=1, seconds=1))
    here.heartbeat()  # c, gone for a day, is dropped from the table
    with db.session() as session:
        rows = session.scalars(sa.select(ControllerReplica.url)).all()
    assert rows == ["https://ctl-a.example:8443"]
