"""Root mode's pure parts: proxy address allocation, the nft table, resolv.conf rewriting."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from umbranet.agent import redirect
from umbranet.agent.config import ConfigError
from umbranet.agent.proxyaddr import ProxyAddresses, parse_range
from umbranet.agent.rootmode import parse_dns_name


def test_proxy_addresses_are_stable_distinct_and_remembered(tmp_path: Path) -> None:
    network = parse_range("100.64.0.0/10")
    path = tmp_path / "proxies.json"
    table = ProxyAddresses(network, path)
    web, db = table.ensure("web"), table.ensure("db")
    assert web != db and web in network and db in network
    assert table.service_for(str(web)) == "web"
    assert table.service_for("100.64.0.1") in (None, "web", "db")
    assert table.service_for("not an address") is None
    again = ProxyAddresses(network, path)
    assert again.address_of("web") == web and again.ensure("db") == db
    elsewhere = ProxyAddresses(network)
    assert elsewhere.ensure("web") == web


def test_a_small_range_fills_up_without_duplicates() -> None:
    table = ProxyAddresses(parse_range("100.64.0.0/24"))
    seen = {table.ensure(f"svc{i}") for i in range(254)}
    assert len(seen) == 254
    assert all(a.packed[3] not in (0, 255) for a in seen)
    with pytest.raises(ValueError, match="full"):
        table.ensure("one-too-many")


def test_ranges_must_be_networks_of_useful_size() -> None:
    for bad in ("100.64.0.1/10", "100.64.0.0/30", "fd00::/64", "nonsense"):
        with pytest.raises(ValueError):
            parse_range(bad)
    assert parse_range("198.18.128.0/17") == ipaddress.IPv4Network("198.18.128.0/17")


def test_the_nft_table_matches_only_the_range() -> None:
    rules = redirect.nft_ruleset("100.64.0.0/10", 41000)
    assert rules.startswith("table ip umbranet {")
    matching = [line for line in rules.splitlines() if "daddr" in line]
    assert matching == [
        "    ip daddr 100.64.0.0/10 meta l4proto tcp redirect to :41000",
        "    ip daddr 100.64.0.0/10 ip daddr . udp dport @udp_keys"
        " redirect to :ip daddr . udp dport map @udp_ports",
        "    ip daddr 100.64.0.0/10 reject",
    ]


def test_udp_redirects_are_replaced_as_a_whole() -> None:
    script = redirect.udp_map_script({("100.64.0.9", 5353): 40001, ("100.64.0.7", 53): 40002})
    assert script.splitlines() == [
        "flush set ip umbranet udp_keys",
        "flush map ip umbranet udp_ports",
        "add element ip umbranet udp_keys { 100.64.0.7 . 53, 100.64.0.9 . 5353 }",
        "add element ip umbranet udp_ports { 100.64.0.7 . 53 : 40002, 100.64.0.9 . 5353 : 40001 }",
    ]
    assert redirect.udp_map_script({}).count("add element") == 0


def test_resolv_conf_points_at_the_stub_and_keeps_other_settings() -> None:
    original = "# from dhcp\nnameserver 10.0.0.2\nsearch corp.example\nnameserver 10.0.0.3\n"
    ours = redirect.resolv_conf_for(original, "127.0.0.153")
    lines = ours.splitlines()
    assert lines[1] == "nameserver 127.0.0.153"
    assert "search corp.example" in lines and "# from dhcp" in lines
    assert sum(line.startswith("nameserver") for line in lines) == 1
    assert redirect.resolv_conf_for(ours, "127.0.0.153") == ours
    assert redirect.read_upstreams(original, "127.0.0.153") == [("10.0.0.2", 53), ("10.0.0.3", 53)]
    assert redirect.read_upstreams(ours, "127.0.0.153") == []
    assert redirect.read_upstreams("nameserver ::1\nnameserver x\n", "127.0.0.153") == []


def test_root_mode_without_root_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(ConfigError) as caught:
        redirect.require_root()
    assert caught.value.code == "needs_root"


def test_nothing_recorded_means_nothing_to_undo(tmp_path: Path) -> None:
    assert redirect.leftovers(tmp_path) is None
    assert redirect.uninstall(tmp_path) == []
    (tmp_path / redirect.STATE_FILE).write_text("{broken")
    with pytest.raises(ConfigError) as caught:
        redirect.leftovers(tmp_path)
    assert caught.value.code == "bad_state"


def test_dns_name_options_parse() -> None:
    assert parse_dns_name("Wiki.Corp.=web") == ("wiki.corp", "web")
    for bad in ("wiki", "=web", "wiki=", "a b=web"):
        with pytest.raises(ConfigError):
            parse_dns_name(bad)
