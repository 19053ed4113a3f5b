"""Network rules in the policy: peers by name/group/tag, CIDRs, ports and protocols are
decided (deny first, then allow, default deny) and explained; per-pair grants are what the
receiving peer's flow filter admits; autoApprovers approve routes and exit nodes."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.unit.test_wireguard_flowfilter import SYN, echo, ipv4, ipv6, tcp, udp
from umbranet.policy import PolicyError, Subject, compile_policy
from umbranet.policy.netgrants import grants_towards, may_reach, routes_reachable
from umbranet.policy.network import (
    NetTarget,
    decide_packet,
    explain_packet,
    parse_net_dst,
    parse_target,
    route_auto_approved,
)
from umbranet.proto.wireguard.flowfilter import FlowFilter, parse_grant

DOC = """{
  "groups": {"group:eng": ["alice", "tag:ci"]},
  "tagOwners": {"tag:db": [], "tag:ci": [], "tag:router": [], "tag:exit": []},
  "network": [
    {"src": ["*"], "dst": ["10.1.9.0/24:22"], "deny": true},
    {"src": ["group:eng"], "dst": ["tag:db:5432", "10.1.0.0/16:22,443"], "proto": ["tcp"]},
    {"src": ["alice"], "dst": ["[fd10::/64]:80", "10.1.0.0/16"], "proto": ["icmp", "udp"]},
    {"src": ["carol"], "dst": ["0.0.0.0/0"]},
    {"src": ["dave"], "dst": ["autogroup:internet:443"]},
  ],
  "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}, "exitNode": ["tag:exit"]},
}"""

ALICE, BOB, CAROL = Subject("alice"), Subject("bob"), Subject("carol")
DB = Subject("db-1", frozenset({"db"}))
DB_V4 = ipaddress.ip_address("100.64.0.9")


def policy():  # type: ignore[no-untyped-def]
    return compile_policy(DOC)


def at(text: str, peer: Subject | None = None) -> NetTarget:
    return NetTarget(ipaddress.ip_address(text), peer)


def test_peers_by_tag_and_cidrs_with_ports_and_protocols_are_decided() -> None:
    p = policy()
    assert decide_packet(p, ALICE, at("100.64.0.9", DB), "tcp", 5432).allowed
    assert not decide_packet(p, ALICE, at("100.64.0.9", DB), "tcp", 22).allowed
    assert not decide_packet(p, BOB, at("100.64.0.9", DB), "tcp", 5432).allowed
    assert decide_packet(p, Subject("ci-1", frozenset({"ci"})), at("10.1.2.3"), "tcp", 443).allowed
    assert not decide_packet(p, ALICE, at("10.1.2.3"), "tcp", 80).allowed
    assert decide_packet(p, ALICE, at("10.1.2.3"), "udp", 80).allowed
    assert decide_packet(p, ALICE, at("10.1.2.3"), "icmp", None).allowed
    assert decide_packet(p, ALICE, at("fd10::7"), "udp", 80).allowed
    assert not decide_packet(p, ALICE, at("fd10::7"), "tcp", 80).allowed
    assert decide_packet(p, CAROL, at("198.51.100.1"), "tcp", 443).allowed


def test_deny_rules_come_first_and_every_verdict_names_its_rule() -> None:
    p = policy()
    verdict = decide_packet(p, ALICE, at("10.1.9.5"), "tcp", 22)
    assert not verdict.allowed
    assert verdict.reason.startswith("denied by network[0] (line 5)")
    verdict, traces, unrelated = explain_packet(p, BOB, at("10.1.2.3"), "tcp", 443)
    assert not verdict.allowed and "default deny" in verdict.reason
    # every rule names bob (``*``) or the address (10.1.0.0/16, 0.0.0.0/0, the internet)
    assert [t.label.split()[0] for t in traces] == [f"network[{i}]" for i in range(5)]
    assert all(not t.matched for t in traces)
    assert [t.why for t in traces][1] == "names the target but not the subject"
    _, traces, unrelated = explain_packet(p, BOB, at("fd99::1", DB), "tcp", 443)
    assert (len(traces), unrelated) == (2, 3)  # the deny (src *), tag:db (the target)


@pytest.mark.parametrize(
    ("dst", "code"),
    [
        ('"tag:nope:22"', "policy_unknown_tag"),
        ('"group:nope"', "policy_unknown_group"),
        ('"10.1.0.0/16:70000"', "policy_ports"),
        ('"[fd00::/64"', "policy_selector"),
        ('"10.1.0.0/16:"', "policy_ports"),
    ],
)
def test_bad_destinations_are_refused_with_a_code(dst: str, code: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy('{"network": [{"src": ["*"], "dst": [' + dst + "]}]}")
    assert caught.value.code == code


def test_bad_protocol_and_bad_approver_prefix_are_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy('{"network": [{"src": ["*"], "dst": ["*"], "proto": ["sctp"]}]}')
    assert caught.value.code == "policy_schema"
    with pytest.raises(PolicyError) as caught:
        compile_policy('{"autoApprovers": {"routes": {"10.1.0.0/33": ["*"]}}}')
    assert caught.value.code == "policy_selector"


def test_grants_towards_a_peer_subtract_denies_and_carry_routes_by_prefix() -> None:
    p = policy()
    assert grants_towards(p, ALICE, DB, [DB_V4]) == ["tcp/5432"]
    assert grants_towards(p, BOB, DB, [DB_V4]) == []
    router = Subject("gw", frozenset({"router"}))
    routes = [ipaddress.ip_network("10.1.0.0/16")]
    entries = grants_towards(p, ALICE, router, [ipaddress.ip_address("100.64.0.5")], routes)
    assert "tcp/22@10.1.0.0/16" in entries and "tcp/443@10.1.0.0/16" in entries
    assert "udp/*@10.1.0.0/16" in entries and "icmp@10.1.0.0/16" in entries
    assert "!tcp/22@10.1.9.0/24" in entries
    assert may_reach(p, ALICE, router, [], routes)
    assert not may_reach(p, BOB, router, [], routes)


def test_a_rule_covering_one_of_two_addresses_is_pinned_to_it() -> None:
    doc = '{"network": [{"src": ["p"], "dst": ["100.64.0.0/10:22", "c-host:80"]}]}'
    p = compile_policy(doc)
    mine = [ipaddress.ip_address("100.64.0.7"), ipaddress.ip_address("fd00::7")]
    entries = grants_towards(p, Subject("p"), Subject("c-host"), mine)
    assert "tcp/80" in entries and "tcp/22@100.64.0.7/32" in entries
    assert "tcp/22" not in entries and "icmp" in entries  # c-host:80 covers ICMP on both
    flows = FlowFilter(["100.64.0.7", "fd00::7"])
    flows.set_grants({b"k" * 32: parse_grant(entries)})
    v4 = ipv4("100.64.0.9", "100.64.0.7", 6, tcp(4000, 22, SYN))
    v6 = ipv6("fd00::9", "fd00::7", 6, tcp(4000, 22, SYN))
    assert flows.check_inbound(b"k" * 32, v4, 0.0) is None
    assert flows.check_inbound(b"k" * 32, v6, 0.0) == "no_grant"


def test_clients_get_only_routes_policy_lets_them_reach_into() -> None:
    p = policy()
    routes = [ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("0.0.0.0/0")]
    assert routes_reachable(p, ALICE, routes) == [routes[0]]
    assert routes_reachable(p, CAROL, routes) == routes
    assert routes_reachable(p, BOB, routes) == []
    dave = Subject("dave")
    assert routes_reachable(p, dave, routes) == [routes[1]]  # the internet: exit nodes only
    assert decide_packet(p, dave, at("198.51.100.1"), "tcp", 443).allowed
    assert not decide_packet(p, dave, at("100.64.0.9", DB), "tcp", 443).allowed
    assert not may_reach(p, dave, DB, [DB_V4])


def test_auto_approvers_approve_inside_their_prefix_for_their_selectors() -> None:
    p = policy()
    router, exit_node = Subject("gw", frozenset({"router"})), Subject("x", frozenset({"exit"}))
    assert route_auto_approved(p, router, ipaddress.ip_network("10.1.0.0/16"))
    assert not route_auto_approved(p, router, ipaddress.ip_network("192.168.0.0/16"))
    assert not route_auto_approved(p, ALICE, ipaddress.ip_network("10.1.0.0/16"))
    assert not route_auto_approved(p, router, ipaddress.ip_network("0.0.0.0/0"))
    assert route_auto_approved(p, exit_node, ipaddress.ip_network("0.0.0.0/0"))


def test_parse_target_reads_address_port_and_protocol() -> None:
    assert parse_target("10.1.2.3:443/tcp") == ("10.1.2.3", 443, "tcp")
    assert parse_target("[fd00::1]:53/udp") == ("fd00::1", 53, "udp")
    assert parse_target("10.1.2.3/icmp") == ("10.1.2.3", None, "icmp")
    assert parse_target("fd00::1") == ("fd00::1", None, "tcp")
    with pytest.raises(ValueError):
        parse_target("10.1.2.3:99999/tcp")


def test_the_receivers_filter_enforces_compiled_route_grants() -> None:
    """End to end in memory: policy -> grant entries -> the subnet router's filter."""
    p = policy()
    router = Subject("gw", frozenset({"router"}))
    routes = [ipaddress.ip_network("10.1.0.0/16")]
    me = "100.64.0.5"
    flows = FlowFilter([me])
    k_alice, k_bob = b"a" * 32, b"b" * 32
    flows.set_grants(
        {
            k_alice: parse_grant(
                grants_towards(p, ALICE, router, [ipaddress.ip_address(me)], routes)
            ),
            k_bob: parse_grant(grants_towards(p, BOB, router, [ipaddress.ip_address(me)], routes)),
        }
    )
    alice, bob = "100.64.0.1", "100.64.0.2"
    assert (
        flows.check_inbound(k_alice, ipv4(alice, "10.1.2.3", 6, tcp(40000, 443, SYN)), 0.0) is None
    )
    assert flows.check_inbound(k_alice, ipv4(alice, "10.1.2.3", 17, udp(40000, 53)), 0.0) is None
    assert flows.check_inbound(k_alice, ipv4(alice, "10.1.2.3", 1, echo(8, 7)), 0.0) is None
    assert (
        flows.check_inbound(k_alice, ipv4(alice, "10.1.9.3", 6, tcp(40000, 22, SYN)), 0.0)
        == "route_denied"
    )
    assert (
        flows.check_inbound(k_alice, ipv4(alice, "10.1.2.3", 6, tcp(40000, 80, SYN)), 0.0)
        == "route_no_grant"
    )
    assert (
        flows.check_inbound(k_alice, ipv4(alice, "10.2.0.1", 6, tcp(40000, 443, SYN)), 0.0)
        == "not_for_us"
    )
    assert (
        flows.check_inbound(k_bob, ipv4(bob, "10.1.2.3", 6, tcp(40000, 443, SYN)), 0.0)
        == "not_for_us"
    )
    assert flows.check_inbound(k_alice, ipv4(alice, me, 6, tcp(40000, 443, SYN)), 0.0) == "no_grant"
    drops = flows.statistics()["drops"]
    assert drops == {"route_denied": 1, "route_no_grant": 1, "not_for_us": 2, "no_grant": 1}
    # A policy change: the next packet of alice's live flow into the LAN is dropped.
    flows.set_grants({k_alice: parse_grant([]), k_bob: parse_grant([])})
    assert (
        flows.check_inbound(k_alice, ipv4(alice, "10.1.2.3", 6, tcp(40000, 443, 0x10)), 1.0)
        == "not_for_us"
    )


# -- the filter admits exactly what the engine allows -------------------------------------------

C_V4, C_V6 = "100.64.0.7", "fd00::7"
C_SUBJECT = Subject("c-host", frozenset({"ct"}))
P_SUBJECT = Subject("p", frozenset({"pt"}))
SRCS = ["p", "*", "group:g", "tag:pt", "other"]
DSTS = ["c-host", "tag:ct", "10.1.0.0/16", "10.1.2.0/24", "10.0.0.0/8", "100.64.0.0/10",
        "100.64.0.7", "[fd00::/64]", "[fd10::/48]", "[fd10:0:0:1::/64]", "*"]  # fmt: skip
PORTS = ["", ":22", ":80,443", ":1000-2000"]
TARGETS = [C_V4, C_V6, "10.1.2.3", "10.1.9.9", "10.2.0.1", "fd10::5", "fd10:0:0:1::9",
           "192.0.2.1"]  # fmt: skip
SERVED = ["10.1.0.0/16", "fd10::/48"]

rule_strategy = st.fixed_dictionaries(
    {
        "src": st.lists(st.sampled_from(SRCS), min_size=1, max_size=2),
        "dst": st.lists(
            st.tuples(st.sampled_from(DSTS), st.sampled_from(PORTS)).map(lambda t: t[0] + t[1]),
            min_size=1,
            max_size=3,
        ),
        "proto": st.lists(st.sampled_from(["tcp", "udp", "icmp"]), min_size=1, unique=True),
        "deny": st.booleans(),
    }
)


@given(
    rules=st.lists(rule_strategy, max_size=5),
    group=st.lists(st.sampled_from(["p", "tag:pt", "other"]), max_size=2),
    served=st.lists(st.sampled_from(SERVED), unique=True),
    target=st.sampled_from(TARGETS),
    proto=st.sampled_from(["tcp", "udp", "icmp"]),
    port=st.sampled_from([22, 80, 443, 1500, 5000]),
)
@settings(max_examples=300, deadline=None)
def test_compiled_grants_admit_exactly_what_decide_packet_allows(  # noqa: PLR0917
    rules: list[dict[str, object]],
    group: list[str],
    served: list[str],
    target: str,
    proto: str,
    port: int,
) -> None:
    """Policy -> per-pair entries -> the receiver's filter, against the engine's verdict for
    the same packet (own addresses and subnet routes; an own address's ICMP follows the
    older any-grant rule, so it is left out)."""
    own = target in (C_V4, C_V6)
    assume(not (own and proto == "icmp"))
    doc = {"groups": {"group:g": group}, "tagOwners": {"tag:pt": [], "tag:ct": []},
           "network": rules}  # fmt: skip
    p = compile_policy(json.dumps(doc))
    address = ipaddress.ip_address(target)
    routes = [ipaddress.ip_network(r) for r in served]
    mine = [ipaddress.ip_address(C_V4), ipaddress.ip_address(C_V6)]
    entries = grants_towards(p, P_SUBJECT, C_SUBJECT, mine, routes)
    flows = FlowFilter([C_V4, C_V6])
    key = b"p" * 32
    flows.set_grants({key: parse_grant(entries)})
    v6 = address.version == 6
    src = "fd00::9" if v6 else "100.64.0.9"
    number = {"tcp": 6, "udp": 17, "icmp": 58 if v6 else 1}[proto]
    body = {"tcp": tcp(40000, port, SYN), "udp": udp(40000, port)}.get(proto)
    if body is None:
        body = echo(128 if v6 else 8, 7)
    packet = ipv6(src, target, number, body) if v6 else ipv4(src, target, number, body)
    passed = flows.check_inbound(key, packet, 0.0) is None
    inside = own or any(address in r for r in routes)
    verdict = decide_packet(
        p, P_SUBJECT, NetTarget(address, C_SUBJECT if own else None), proto,
        None if proto == "icmp" else port,
    )  # fmt: skip
    assert passed == (inside and verdict.allowed), (entries, verdict.reason)


@given(st.text(alphabet="0123456789abcdef:./[]*-,tagroupinternet", max_size=40))
@settings(max_examples=300, deadline=None)
def test_destination_parsing_refuses_cleanly_and_round_trips(text: str) -> None:
    try:
        parsed = parse_net_dst(text)
    except (ValueError, LookupError):
        return
    assert parse_net_dst(parsed.text) == parsed


@given(st.lists(st.text(max_size=30), max_size=6))
@settings(max_examples=200, deadline=None)
def test_any_grant_entries_parse_without_raising(entries: list[str]) -> None:
    grant = parse_grant(entries)
    assert grant.any in (True, False)


def test_policy_tests_check_network_rules_too() -> None:
    doc = DOC.replace(
        '"autoApprovers"',
        '"tests": [{"src": "alice", "accept": ["net 10.1.2.3:443/tcp", "net 10.1.2.3/icmp"],'
        ' "deny": ["net 10.1.9.3:22/tcp", "net [fd10::1]:80/tcp"]}], "autoApprovers"',
    )
    compile_policy(doc)
    failing = doc.replace('"net 10.1.9.3:22/tcp"', '"net 10.1.2.3:22/tcp"')
    with pytest.raises(PolicyError) as caught:
        compile_policy(failing)
    assert caught.value.code == "policy_tests_failed"
    assert "net 10.1.2.3:22/tcp" in caught.value.reason
    with pytest.raises(PolicyError) as caught:
        compile_policy(doc.replace("net 10.1.2.3/icmp", "net db-1:22"))
    assert caught.value.code == "policy_test_invalid"


def test_the_internet_through_an_exit_node_stops_at_its_lan() -> None:
    """dave may use gw as an exit node (autogroup:internet); gw also routes 10.1.0.0/16, which
    is not the internet: dave's packets there are dropped unless a rule names the LAN."""
    p = policy()
    gw = Subject("gw", frozenset({"router"}))
    routes = [ipaddress.ip_network(r) for r in ("0.0.0.0/0", "::/0", "10.1.0.0/16")]
    entries = grants_towards(p, Subject("dave"), gw, [], routes)
    allows = sorted(e for e in entries if not e.startswith("!"))
    assert allows == ["icmp@internet", "tcp/443@internet", "udp/443@internet"]
    flows = FlowFilter(["100.64.0.5"])
    flows.set_served(["10.1.0.0/16"])
    flows.set_grants({b"d" * 32: parse_grant(entries)})
    out = ipv4("100.64.0.9", "198.51.100.7", 6, tcp(4000, 443, SYN))
    lan = ipv4("100.64.0.9", "10.1.2.3", 6, tcp(4000, 443, SYN))
    out6 = ipv6("fd00::9", "2001:db8::7", 6, tcp(4000, 443, SYN))
    assert flows.check_inbound(b"d" * 32, out, 0.0) is None
    assert flows.check_inbound(b"d" * 32, out6, 0.0) is None
    assert flows.check_inbound(b"d" * 32, lan, 0.0) == "route_no_grant"
    assert not decide_packet(p, Subject("dave"), NetTarget(ipaddress.ip_address("10.1.2.3"),
                             None, in_subnet=True), "tcp", 443).allowed  # fmt: skip
