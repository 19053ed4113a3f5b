"""Evaluator, table-driven: rules, ports, deny-first order, groups, tags, postures, HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from umbranet.policy import (
    CompiledPolicy,
    Inventory,
    PolicyUsageError,
    PostureReport,
    ServiceRef,
    Subject,
    Verdict,
    compile_policy,
)
from umbranet.policy.pathnorm import normalize_path, path_has_prefix

INVENTORY = Inventory(
    services={
        "billing": ["payments"],
        "ledger": ["payments"],
        "db": [],
        "web": ["web"],
        "wiki": ["web"],
    },
    identities={
        "alice": [],
        "bob": [],
        "carol": ["tag:contractor"],
        "runner": ["ci"],
        "dbhost": ["tag:db"],
        "root": [],
    },
)

POLICY = """
{
  "groups": {
    "group:eng": ["alice", "group:sre", "tag:ci"],
    "group:sre": ["bob"],
    "group:admins": ["root"],
  },
  "tagOwners": {
    "tag:ci": ["group:admins"], "tag:db": ["group:admins", "bob"], "tag:contractor": [],
  },
  "postures": {
    "posture:corp": {"os": ["linux", "darwin"], "sdkVersion": ">=0.2"},
    "posture:office": {"sourceCidr": ["10.0.0.0/8"]},
  },
  "rules": [
    {"action": "dial", "src": ["group:eng"], "dst": ["svc:billing:443,8443", "attr:web"]},  // 0
    {"action": "dial", "src": ["group:eng"], "dst": ["svc:db:5432"], "posture": ["posture:corp"]},
    {"action": "bind", "src": ["tag:db"], "dst": ["svc:db"]},                                // 2
    {"action": "dial", "src": ["*"], "dst": ["svc:wiki:80"]},                               // 3
    {"action": "dial", "src": ["tag:contractor"], "dst": ["*"], "deny": true},              // 4
    {"action": "dial", "src": ["group:sre"], "dst": ["attr:payments:1-1024"]},              // 5
    {"action": "dial", "src": ["*"], "dst": ["svc:ledger:22"], "deny": true},               // 6
    {"action": "dial", "src": ["alice"], "dst": ["svc:db"], "deny": true,
     "posture": ["posture:office"]},                                                         // 7
  ],
  "http": [
    {"src": ["*"], "dst": ["svc:web"], "methods": ["GET"], "paths": ["/public"]},
    {"src": ["group:sre"], "dst": ["attr:web"], "paths": ["/admin"]},
    {"src": ["bob"], "dst": ["svc:web"], "paths": ["/admin/secrets"], "deny": true},
  ],
}
"""

CORP = PostureReport(os="linux", sdk_version="0.3.1", source_ip="192.168.1.4")
OFFICE = PostureReport(os="linux", sdk_version="0.3.1", source_ip="10.2.3.4")
WINDOWS = PostureReport(os="windows", sdk_version="0.3.1", source_ip="192.168.1.4")
NOW = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    return compile_policy(POLICY, INVENTORY)


def _who(name: str) -> Subject:
    return INVENTORY.identity(name) or Subject(name)


def _svc(name: str) -> ServiceRef:
    return INVENTORY.service(name) or ServiceRef(name)


DECISIONS = [
    # subject, service, action, port, posture, allowed, reason fragment
    ("alice", "billing", "dial", 443, None, True, "allowed by rules[0] (line 16)"),
    ("alice", "billing", "dial", 8443, None, True, "rules[0]"),
    ("alice", "billing", "dial", 80, None, False,
     "no rule allows alice to dial billing port 80 (default deny); nearest: rules[0] (line 16) "
     "covers ports 443,8443 only"),
    ("alice", "billing", "dial", None, None, True, "rules[0]"),
    ("alice", "billing", "bind", None, None, False, "no rule allows alice to bind billing"),
    ("alice", "web", "dial", 12345, None, True, "rules[0]"),  # attr:web, every port
    ("runner", "web", "dial", 80, None, True, "rules[0]"),  # tag:ci is in group:eng
    ("bob", "web", "dial", 80, None, True, "rules[0]"),  # via nested group:sre
    ("root", "web", "dial", 80, None, False, "no rule allows root to dial web port 80"),
    ("root", "wiki", "dial", 80, None, True, "allowed by rules[3]"),
    ("root", "wiki", "dial", 81, None, False, "nearest: rules[3] (line 19) covers ports 80 only"),
    # posture-gated allow
    ("bob", "db", "dial", 5432, None, False,
     "nearest: rules[1] (line 17) requires posture, but posture:corp is unknown (os not reported)"),
    ("alice", "db", "dial", 5432, None, False, "denied by rules[7]"),  # unknown posture: deny holds
    ("alice", "db", "dial", 5432, CORP, True, "allowed by rules[1]"),
    ("alice", "db", "dial", 5432, WINDOWS, False,
     "requires posture, but posture:corp failed (os 'windows' not in [darwin, linux])"),
    ("alice", "db", "dial", 5433, CORP, False, "rules[1] (line 17) covers ports 5432 only"),
    # posture-gated deny: applies when its posture holds, and when it is unknown
    ("alice", "db", "dial", 5432, OFFICE, False, "denied by rules[7]"),
    ("alice", "db", "dial", 5432, PostureReport(os="linux", sdk_version="0.3"), False,
     "denied by rules[7] (line 23): deny dial alice -> svc:db if posture:office"),
    ("bob", "db", "dial", 5432, PostureReport(os="linux", sdk_version="1.0"), True,
     "allowed by rules[1]"),
    # explicit deny first, whatever the allows say
    ("carol", "wiki", "dial", 80, None, False,
     "denied by rules[4] (line 20): deny dial tag:contractor -> *"),
    ("bob", "ledger", "dial", 22, None, False, "denied by rules[6]"),
    ("bob", "ledger", "dial", 23, None, True, "allowed by rules[5]"),
    ("bob", "ledger", "dial", None, None, True, "allowed by rules[5]"),  # ports left after deny
    ("bob", "billing", "dial", 443, None, True, "allowed by rules[0]"),
    ("bob", "billing", "dial", 80, None, True, "allowed by rules[5]"),
    ("bob", "billing", "dial", 2000, None, False,
     "nearest: rules[0] (line 16) covers ports 443,8443 only"),
    # bind
    ("dbhost", "db", "bind", None, None, True, "allowed by rules[2]"),
    ("dbhost", "db", "dial", None, None, False, "no rule allows dbhost to dial db"),
    # requests no rule can match
    ("alice", "billing", "connect", 443, None, False, "unknown action 'connect'"),
    ("alice", "billing", "dial", 0, None, False, "port 0 is out of range"),
    ("alice", "billing", "dial", 70000, None, False, "port 70000 is out of range"),
    ("alice", "unknown-svc", "dial", 443, None, False, "no rule allows alice to dial unknown-svc"),
]  # fmt: skip


Decision = tuple[str, str, str, int | None, PostureReport | None, bool, str]


@pytest.mark.parametrize("case", DECISIONS, ids=lambda c: f"{c[0]}-{c[2]}-{c[1]}-{c[3]}")
def test_decisions(policy: CompiledPolicy, case: Decision) -> None:
    who, service, action, port, posture, allowed, reason = case
    verdict = policy.decide(_who(who), _svc(service), action, port, posture=posture, now=NOW)
    assert verdict.allowed is allowed, verdict.reason
    assert reason in verdict.reason
    explained = policy.explain(_who(who), _svc(service), action, port, posture=posture, now=NOW)
    assert explained.verdict == verdict


def test_port_none_is_denied_when_every_allowed_port_is_denied() -> None:
    text = """{"rules": [
      {"action": "dial", "src": ["*"], "dst": ["svc:db:22,80"]},
      {"action": "dial", "src": ["*"], "dst": ["svc:db:22"], "deny": true},
      {"action": "dial", "src": ["*"], "dst": ["svc:db:80"], "deny": true},
    ]}"""
    policy = compile_policy(text, INVENTORY)
    verdict = policy.decide(_who("alice"), _svc("db"), "dial")
    assert verdict == Verdict.deny(
        "no rule allows alice to dial db (default deny); nearest: rules[0] (line 2) covers ports "
        "22,80, all denied by rules[1] (line 3), rules[2] (line 4)"
    )
    assert policy.explain(_who("alice"), _svc("db"), "dial").verdict == verdict


def test_explain_lists_related_rules_and_counts_others(policy: CompiledPolicy) -> None:
    explained = policy.explain(_who("alice"), _svc("db"), "dial", 5432, posture=WINDOWS, now=NOW)
    labels = [t.label.split()[0] for t in explained.rules]
    assert labels == [f"rules[{i}]" for i in (0, 1, 2, 3, 4, 6, 7)]
    assert explained.unrelated == 1
    why = {t.label.split()[0]: t.why for t in explained.rules}
    assert why["rules[0]"] == "dst does not include the service"
    assert why["rules[2]"] == "is a bind rule"
    assert (
        why["rules[7]"]
        == "does not apply: posture:office failed (source 192.168.1.4 not in [10.0.0.0/8])"
    )
    assert [r.name for r in explained.postures] == ["posture:corp", "posture:office"]
    text = explained.render()
    assert text.startswith("DENY: alice dial db port 5432\n  reason: no rule allows alice")
    assert "groups [group:eng]" in text
    assert explained.to_dict()["allowed"] is False


def test_explain_marks_the_decisive_rule(policy: CompiledPolicy) -> None:
    explained = policy.explain(_who("bob"), _svc("billing"), "dial", 443)
    decisive = [t for t in explained.rules if t.decisive]
    assert [t.label for t in decisive] == ["rules[0] (line 16)"]
    also = [t for t in explained.rules if t.matched and not t.decisive]
    assert [t.why for t in also] == ["allows too, but an earlier rule decided"]


def test_naive_now_is_a_usage_error(policy: CompiledPolicy) -> None:
    with pytest.raises(PolicyUsageError):
        policy.decide(_who("alice"), _svc("db"), "dial", now=datetime(2024, 1, 1))


def test_groups_are_resolved_by_the_policy(policy: CompiledPolicy) -> None:
    assert policy.groups_of(_who("bob")) == {"group:eng", "group:sre"}
    assert policy.groups_of(Subject.of("x", ["tag:ci"])) == {"group:eng"}
    assert policy.groups_of(_who("root")) == {"group:admins"}
    assert policy.groups_of(Subject("nobody")) == frozenset()


@pytest.mark.parametrize(
    ("admin", "tag", "allowed", "reason"),
    [
        ("root", "tag:db", True, "tagOwners lets group:admins assign tag:db"),
        ("bob", "db", True, "tagOwners lets bob assign tag:db"),
        ("alice", "tag:db", False, "alice may not assign tag:db (owners: group:admins, bob)"),
        ("root", "tag:contractor", False, "(owners: nobody)"),
        ("root", "tag:unknown", False, "tag:unknown is not declared in tagOwners"),
    ],
)
def test_may_assign_tag(
    policy: CompiledPolicy, admin: str, tag: str, allowed: bool, reason: str
) -> None:
    verdict = policy.may_assign_tag(_who(admin), tag)
    assert verdict.allowed is allowed
    assert reason in verdict.reason


HTTP = [
    ("alice", "web", "GET", "/public", True, "allowed by http[0]"),
    ("alice", "web", "get", "/public/a/b?x=1", True, "allowed by http[0]"),
    ("alice", "web", "POST", "/public", False,
     "no http rule allows alice to POST /public on 'web'"),
    ("alice", "web", "GET", "/publicity", False, "default deny"),
    ("alice", "web", "GET", "/public/../admin", False, "to GET /admin on 'web'"),
    ("alice", "web", "GET", "/public/%2e%2e/admin", False, "GET /admin"),
    ("alice", "web", "GET", "/public%2F..%2Fadmin", False, "default deny"),  # one odd segment
    ("alice", "web", "GET", "//public", True, "http[0]"),
    ("alice", "web", "GET", "public", False, "is not a valid path"),
    ("alice", "web", "GET", "/public/%zz", False, "is not a valid path"),
    ("bob", "web", "DELETE", "/admin/users", True, "allowed by http[1]"),
    ("bob", "web", "GET", "/admin/secrets/k", False, "denied by http[2]"),
    ("bob", "wiki", "GET", "/admin/secrets/k", True, "allowed by http[1]"),  # deny names web only
    ("alice", "wiki", "GET", "/public", False, "no http rule allows alice"),
    ("alice", "db", "POST", "/anything", True,
     "no http rules name 'db'; the dial rules decide alone"),
]  # fmt: skip


@pytest.mark.parametrize("case", HTTP, ids=lambda c: f"{c[0]}-{c[2]}-{c[1]}{c[3]}")
def test_http_decisions(policy: CompiledPolicy, case: tuple[str, str, str, str, bool, str]) -> None:
    who, service, method, path, allowed, reason = case
    verdict = policy.decide_http(_who(who), _svc(service), method, path)
    assert verdict.allowed is allowed, verdict.reason
    assert reason in verdict.reason
    assert policy.explain_http(_who(who), _svc(service), method, path).verdict == verdict


def test_http_fragment_round_trips_through_json(policy: CompiledPolicy) -> None:
    from umbranet.policy import HttpFragment

    fragment = policy.http_fragment(_svc("web"))
    again = HttpFragment.from_json(fragment.to_json())
    assert again == fragment
    assert {g.label.split()[0] for g in again.grants} == {"http[0]", "http[1]", "http[2]"}
    # group:sre is flattened to its members: the endpoint never sees group names
    assert again.grants[1].source.names == {"bob"}


def test_malformed_fragment_is_a_policy_error() -> None:
    from umbranet.policy import HttpFragment, PolicyError

    with pytest.raises(PolicyError) as caught:
        HttpFragment.from_json({"service": "web", "rules": [{"label": 1}]})
    assert caught.value.code == "policy_http"


PATHS = [
    ("/", "/"),
    ("/a/b/", "/a/b"),
    ("/a/./b", "/a/b"),
    ("/a/../../b", "/b"),
    ("/a//b", "/a/b"),
    ("/a%20b", "/a b"),
    ("/a%2fb", "/a%2Fb"),
    ("/a?q=/x#f", "/a"),
    ("http://host:8080/a/b", "/a/b"),
    ("https://host", "/"),
    ("/%C3%A9", "/é"),
    ("a/b", None),
    ("", None),
    ("/a%", None),
    ("/a%ff", None),  # not UTF-8
    ("/a%00", None),
    ("/a\\b", None),
    ("/a%5Cb", None),
]


@pytest.mark.parametrize(("target", "expected"), PATHS)
def test_path_normalization(target: str, expected: str | None) -> None:
    assert normalize_path(target) == expected


@pytest.mark.parametrize(
    ("path", "prefix", "expected"),
    [("/a", "/", True), ("/a", "/a", True), ("/a/b", "/a", True), ("/ab", "/a", False)],
)
def test_prefixes_match_whole_segments(path: str, prefix: str, expected: bool) -> None:
    assert path_has_prefix(path, prefix) is expected
