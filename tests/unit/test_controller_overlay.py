"""Overlay addresses at the controller (network mode): stable, unique, in the configured
ranges, served in /v1/me and, with keys, endpoints and reach, only to peers policy allows."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controller_harness import Harness, error_code, make_harness
from umbranet.controller.service.addresses import OverlaySettings
from umbranet.policy.addressing import ula_prefix

POLICY = """{"rules": [
  {"action": "bind", "src": ["srv"], "dst": ["svc:web"]},
  {"action": "dial", "src": ["cli"], "dst": ["svc:web"]},
]}"""


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def test_every_identity_gets_stable_addresses_in_the_ranges(h: Harness) -> None:
    alice = h.client(h.new_device("alice"))
    bob = h.client(h.new_device("bob"))
    first = alice.get("/v1/me").json()
    again = alice.get("/v1/me").json()
    other = bob.get("/v1/me").json()
    assert (first["ipv4"], first["ipv6"]) == (again["ipv4"], again["ipv6"])
    assert ipaddress.IPv4Address(first["ipv4"]) in ipaddress.IPv4Network("100.64.0.0/10")
    trust_domain = h.loaded.authority.trust_domain
    assert ipaddress.IPv6Address(first["ipv6"]) in ula_prefix(trust_domain)
    assert first["ipv4"] != other["ipv4"] and first["ipv6"] != other["ipv6"]


def test_addresses_survive_a_restart_of_the_allocator(h: Harness) -> None:
    """What is stored wins: a changed range does not move an identity already placed."""
    alice = h.client(h.new_device("alice"))
    before = alice.get("/v1/me").json()["ipv4"]
    h.app.state.umbra.overlay = OverlaySettings(ipv4_range="10.99.0.0/16")
    assert alice.get("/v1/me").json()["ipv4"] == before
    bob = h.client(h.new_device("bob"))
    assert ipaddress.IPv4Address(bob.get("/v1/me").json()["ipv4"]) in ipaddress.IPv4Network(
        "10.99.0.0/16"
    )


def test_a_full_pool_is_a_clear_refusal(h: Harness) -> None:
    h.app.state.umbra.overlay = OverlaySettings(ipv4_range="10.98.0.0/30")  # two hosts
    answers = [h.client(h.new_device(f"d{i}")).get("/v1/me") for i in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 400]
    assert error_code(answers[2]) == "address_pool_exhausted"


def test_view_gives_addresses_keys_endpoints_and_reach_only_to_allowed_peers(h: Harness) -> None:
    admin = h.client(h.admin)
    body = {"name": "web", "host_address": "tcp://127.0.0.1:8080"}
    assert admin.post("/v1/services", json=body).status_code == 201
    assert admin.put("/v1/policy", json={"text": POLICY}).status_code == 200
    srv_id, cli_id = h.new_device("srv"), h.new_device("cli")
    srv, cli = h.client(srv_id), h.client(cli_id)
    outsider = h.client(h.new_device("outsider"))
    published = srv.put("/v1/network/endpoint", json={"port": 51820, "host": "198.18.5.1"})
    assert published.json() == {"endpoint": "198.18.5.1:51820"}

    seen_by_cli = cli.get("/v1/view").json()["peers"]
    assert [p["name"] for p in seen_by_cli] == ["srv"]
    assert seen_by_cli[0]["ipv4"] == srv.get("/v1/me").json()["ipv4"]
    assert seen_by_cli[0]["endpoint"] == "198.18.5.1:51820"
    assert seen_by_cli[0]["noise_public_key"]
    assert seen_by_cli[0]["reach"] == []  # srv may not open flows towards cli

    seen_by_srv = srv.get("/v1/view").json()["peers"]
    assert [p["name"] for p in seen_by_srv] == ["cli"]
    assert seen_by_srv[0]["reach"] == ["tcp/8080", "icmp"]  # a service user may ping its host
    assert seen_by_srv[0]["endpoint"] is None  # cli never published one

    assert outsider.get("/v1/view").json()["peers"] == []


def test_endpoint_must_be_an_ip_and_port(h: Harness) -> None:
    client = h.client(h.new_device("alice"))
    bad_host = client.put("/v1/network/endpoint", json={"port": 51820, "host": "evil.example"})
    assert error_code(bad_host) == "invalid_endpoint"
    assert client.put("/v1/network/endpoint", json={"port": 0}).status_code == 422
    anywhere = client.put("/v1/network/endpoint", json={"port": 9, "host": "0.0.0.0"})
    assert error_code(anywhere) == "invalid_endpoint"


def test_overlay_ranges_come_from_the_config_and_bad_ones_fail_at_start() -> None:
    settings = OverlaySettings.from_config({"overlay_ipv4_range": "10.77.0.0/16"})
    assert settings.ipv4_range == "10.77.0.0/16" and settings.ipv6_prefix is None
    assert OverlaySettings.from_config({}).ipv4_range == "100.64.0.0/10"
    for bad in ({"overlay_ipv4_range": "10.77.0.0/31"}, {"overlay_ipv6_prefix": "fd00::/124"},
                {"overlay_ipv4_range": 5}):  # fmt: skip
        with pytest.raises(ValueError):
            OverlaySettings.from_config(bad)


def test_a_policy_change_takes_the_peer_and_its_reach_out_of_the_view(h: Harness) -> None:
    admin = h.client(h.admin)
    body = {"name": "web", "host_address": "tcp://127.0.0.1:8080"}
    assert admin.post("/v1/services", json=body).status_code == 201
    assert admin.put("/v1/policy", json={"text": POLICY}).status_code == 200
    srv = h.client(h.new_device("srv"))
    h.new_device("cli")
    assert [p["reach"] for p in srv.get("/v1/view").json()["peers"]] == [["tcp/8080", "icmp"]]
    only_bind = """{"rules": [{"action": "bind", "src": ["srv"], "dst": ["svc:web"]}]}"""
    assert admin.put("/v1/policy", json={"text": only_bind}).status_code == 200
    assert srv.get("/v1/view").json()["peers"] == []
