"""What the agent learns from ``GET /v1/me``: intercepts for every service it may use, and the
host address only for services it may bind (the address is the host's private detail)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controller_harness import Harness, make_harness
from umbranet.client.controller import ControllerClient, Intercept
from umbranet.pki import IdentityFile

Row = tuple[str, list[str], str | None, list[Intercept]]


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def test_me_shows_intercepts_to_all_and_host_address_to_hosts(h: Harness) -> None:
    body = {
        "name": "db",
        "dial_attributes": ["eng"],
        "bind_attributes": ["dbhost"],
        "host_address": "tcp://127.0.0.1:5432",
        "intercepts": [{"host": "db.umbra", "port": 5432}],
    }
    assert h.client(h.admin).post("/v1/services", json=body).status_code == 201
    plain = {"name": "plain", "dial_attributes": ["eng"], "bind_attributes": ["dbhost"]}
    assert h.client(h.admin).post("/v1/services", json=plain).status_code == 201
    alice = h.new_device("alice", ["eng"])
    host = h.new_device("dbserver", ["dbhost"])

    async def me(identity: IdentityFile) -> list[Row]:
        async with ControllerClient(identity, transport=h.transport(identity)) as client:
            info = await client.me()
        return [(s.name, s.actions, s.host_address, s.intercepts) for s in info.services]

    assert asyncio.run(me(alice)) == [
        ("db", ["dial"], None, [Intercept("db.umbra", 5432)]),
        ("plain", ["dial"], None, []),
    ]
    assert asyncio.run(me(host)) == [
        ("db", ["bind"], "tcp://127.0.0.1:5432", [Intercept("db.umbra", 5432)]),
        ("plain", ["bind"], None, []),
    ]
    raw = h.client(alice).get("/v1/me").json()["services"]
    assert raw[1] == {"name": "plain", "actions": ["dial"]}


def test_me_always_sends_the_service_list_and_leaves_out_only_unset_extras(h: Harness) -> None:
    """Older clients read ``services`` unconditionally: it is sent even when empty, while
    the optional parts (host address, intercepts, overlay addresses) are left out unset."""
    nobody = h.new_device("nobody", ["nothing"])
    raw = h.client(nobody).get("/v1/me").json()
    assert raw["services"] == []
    assert {"name", "kind", "spiffe_id", "attributes", "services"} <= set(raw)
    assert not {"ipv4", "ipv6"} & {k for k, v in raw.items() if v is None}
