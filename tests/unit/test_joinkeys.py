"""Join keys: one key gives each replica an identity of its own; single use, expiry, revocation
and ephemeral removal are enforced by the controller; the client redeems over pinned TLS."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.controller_harness import Harness, error_code, make_harness
from umbranet.cli.joinkey_cmd import parse_duration
from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.client.joinkeys import enroll_with_join_key, redeem_join_key
from umbranet.controller.ephemeral_sweeper import EphemeralSweeper
from umbranet.controller.service.joinkeys import sweep_ephemeral
from umbranet.pki.join_key import format_join_key, parse_join_key


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _create(h: Harness, **body: Any) -> dict[str, Any]:
    response = h.client(h.admin).post("/v1/joinkeys", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def _redeem(h: Harness, key: str, prefix: str | None = "web-") -> httpx.Response:
    return h.client().post("/v1/joinkeys/redeem", json={"join_key": key, "name_prefix": prefix})


def test_a_reusable_key_gives_each_replica_its_own_identity(h: Harness) -> None:
    key = _create(h, reusable=True, attributes=["web"])["join_key"]
    names = set()
    for _ in range(3):
        response = _redeem(h, key)
        assert response.status_code == 200, response.text
        body = response.json()
        replica = h.enroll(body["enrollment_token"])
        assert replica.name == body["name"]
        names.add(body["name"])
    assert len(names) == 3 and all(n.startswith("web-") for n in names)
    listed = {i["name"]: i for i in h.client(h.admin).get("/v1/identities").json()}
    assert all(listed[n]["attributes"] == ["web"] and listed[n]["enrolled"] for n in names)
    assert h.client(h.admin).get("/v1/joinkeys").json()[0]["uses"] == 3


def test_a_single_use_key_works_once(h: Harness) -> None:
    key = _create(h)["join_key"]
    assert _redeem(h, key).status_code == 200
    again = _redeem(h, key)
    assert (again.status_code, error_code(again)) == (409, "join_key_used")


def test_expired_revoked_and_forged_keys_are_refused(h: Harness) -> None:
    created = _create(h, reusable=True, expires_seconds=120)
    key = created["join_key"]
    parsed = parse_join_key(key)
    forged = format_join_key(parsed.controller_url, parsed.ca_fingerprint, parsed.key_id, b"x" * 32)
    response = _redeem(h, forged)
    assert (response.status_code, error_code(response)) == (401, "join_key_invalid")
    response = _redeem(h, "ujk1.nonsense")
    assert (response.status_code, error_code(response)) == (401, "join_key_invalid")

    h.clock.advance(timedelta(seconds=121))
    response = _redeem(h, key)
    assert (response.status_code, error_code(response)) == (401, "join_key_expired")

    other = _create(h, reusable=True)
    h.client(h.admin).delete(f"/v1/joinkeys/{other['key']['id']}")
    response = _redeem(h, other["join_key"])
    assert (response.status_code, error_code(response)) == (401, "join_key_revoked")
    # No identity was created by any refused attempt.
    assert [i["name"] for i in h.client(h.admin).get("/v1/identities").json()] == ["admin"]


def test_bad_name_prefix_is_refused(h: Harness) -> None:
    key = _create(h, reusable=True)["join_key"]
    response = _redeem(h, key, prefix="Web/")
    assert (response.status_code, error_code(response)) == (400, "invalid_name_prefix")


def test_only_admins_manage_join_keys(h: Harness) -> None:
    alice = h.new_device("alice")
    for method, path in (("POST", "/v1/joinkeys"), ("GET", "/v1/joinkeys")):
        response = h.client(alice).request(method, path, json={})
        assert (response.status_code, error_code(response)) == (403, "admin_required")


def test_ephemeral_identities_are_removed_after_being_offline(h: Harness) -> None:
    key = _create(h, reusable=True, ephemeral_seconds=600, attributes=["web"])["join_key"]
    online = h.enroll(_redeem(h, key).json()["enrollment_token"])
    offline = h.enroll(_redeem(h, key).json()["enrollment_token"])
    kept = _create(h, reusable=True)["join_key"]  # not ephemeral
    durable = _redeem(h, kept).json()["name"]
    context = h.app.state.umbra
    sweeper = EphemeralSweeper(context)
    context.presence.enter(online.spiffe_id)  # holds the event stream open
    epoch = context.events.epoch

    h.clock.advance(timedelta(seconds=599))
    assert sweeper.tick() == []
    h.clock.advance(timedelta(seconds=2))
    assert sweeper.tick() == [offline.name]
    assert context.events.epoch > epoch  # routers re-check the removed identity's circuits

    names = {i["name"] for i in h.client(h.admin).get("/v1/identities").json()}
    assert {online.name, durable} <= names and offline.name not in names
    assert h.client(offline).get("/v1/me").status_code == 401

    context.presence.leave(online.spiffe_id)
    h.clock.advance(timedelta(seconds=601))
    assert sweeper.tick() == [online.name]


def test_client_redeems_with_the_pinned_ca_and_enrolls(h: Harness) -> None:
    key = _create(h, reusable=True, attributes=["web"])["join_key"]
    # The key names https://127.0.0.1:8443; the ASGI transport stands in for the network.
    identity = asyncio.run(enroll_with_join_key(key, name_prefix="api-", transport=h.transport()))
    assert identity.name.startswith("api-")
    assert identity.spiffe_id.endswith(f"/workload/{identity.name}")

    async def me() -> Any:
        async with ControllerClient(identity, transport=h.transport(identity)) as client:
            return await client._call("GET", "/v1/me")

    assert asyncio.run(me())["attributes"] == ["web"]


def test_client_refuses_a_controller_with_another_ca(h: Harness, tmp_path: Path) -> None:
    key = _create(h, reusable=True)["join_key"]
    parsed = parse_join_key(key)
    wrong = format_join_key(parsed.controller_url, "00" * 32, parsed.key_id, parsed.secret)
    with pytest.raises(ControllerError) as info:
        asyncio.run(redeem_join_key(wrong, transport=h.transport()))
    assert info.value.code == "ca_mismatch"
    # The secret never reached the controller: the key is still unused.
    assert h.client(h.admin).get("/v1/joinkeys").json()[0]["uses"] == 0


@given(
    url=st.text(max_size=40),
    fingerprint=st.text(max_size=64),
    key_id=st.text(max_size=16),
    secret=st.binary(min_size=16, max_size=64),
)
def test_join_key_text_round_trips(url: str, fingerprint: str, key_id: str, secret: bytes) -> None:
    parsed = parse_join_key(format_join_key(url, fingerprint, key_id, secret))
    assert (parsed.controller_url, parsed.ca_fingerprint, parsed.key_id, parsed.secret) == (
        url,
        fingerprint,
        key_id,
        secret,
    )


@given(st.text(max_size=200))
def test_parse_join_key_fails_only_with_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_join_key(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("10m", 600), ("24h", 86400), ("1d12h", 129600)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "10", "h", "10x", "5m junk"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_replica_that_does_not_see_the_stream_does_not_remove_the_identity(h: Harness) -> None:
    key = _create(h, reusable=True, ephemeral_seconds=60)["join_key"]
    replica = h.enroll(_redeem(h, key).json()["enrollment_token"])
    context = h.app.state.umbra
    seen_here = frozenset({replica.spiffe_id})  # controller A holds its event stream
    for _ in range(5):  # 5 sweeps 30 s apart: A keeps last_seen fresh for B
        h.clock.advance(timedelta(seconds=30))
        with context.transaction() as store:
            assert sweep_ephemeral(store, seen_here, h.clock()) == []
        with context.transaction() as store:  # controller B sees no stream at all
            assert sweep_ephemeral(store, frozenset(), h.clock()) == []
    h.clock.advance(timedelta(seconds=61))  # A stopped seeing it too
    with context.transaction() as store:
        assert sweep_ephemeral(store, frozenset(), h.clock()) == [replica.name]
