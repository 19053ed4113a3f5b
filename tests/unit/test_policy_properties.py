"""Properties over random policies: the indexed engine agrees with the linear explanation,
removing an allow never grants more, views agree with decisions, change impact is complete."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from umbranet.policy import (
    CompiledPolicy,
    HttpFragment,
    Inventory,
    PolicyError,
    PostureReport,
    ServiceRef,
    Subject,
    affected_identities,
    compile_policy,
)
from umbranet.policy.peers import NameSet, resolve_union

pytestmark = pytest.mark.slow  # hundreds of examples per property: about 90 s in all

NAMES = ["a", "b", "c", "d"]
TAGS = ["t1", "t2"]
SERVICES = {"s1": ["x"], "s2": ["x", "y"], "s3": []}
PORTS = [1, 2, 3, 4, 5]
NOW = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
REPORTS = [
    None,
    PostureReport(),
    PostureReport(os="linux", source_ip="10.0.0.1"),
    PostureReport(os="windows", source_ip="192.168.0.1"),
]

src_selectors = st.sampled_from([*NAMES, "group:g1", "group:g2", "tag:t1", "tag:t2", "*"])
dst_targets = st.sampled_from(["svc:s1", "svc:s2", "svc:s3", "attr:x", "attr:y", "*"])
port_specs = st.sampled_from(["", ":*", ":1", ":2,3", ":1-4", ":5", ":3-5"])


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "action": draw(st.sampled_from(["dial", "bind"])),
        "src": draw(st.lists(src_selectors, min_size=1, max_size=3)),
        "dst": [
            draw(dst_targets) + draw(port_specs)
            for _ in range(draw(st.integers(min_value=1, max_value=3)))
        ],
    }
    if draw(st.booleans()):
        rule["deny"] = draw(st.booleans())
    postures = draw(st.lists(st.sampled_from(["posture:linux", "posture:office"]), max_size=2))
    if postures:
        rule["posture"] = postures
    return rule


@st.composite
def http_rules(draw: st.DrawFn) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "src": draw(st.lists(src_selectors, min_size=1, max_size=2)),
        "dst": draw(st.lists(dst_targets, min_size=1, max_size=2)),
        "deny": draw(st.booleans()),
    }
    if draw(st.booleans()):
        rule["methods"] = draw(st.lists(st.sampled_from(["GET", "POST", "*"]), min_size=1))
    if draw(st.booleans()):
        rule["paths"] = draw(st.lists(st.sampled_from(["/", "/a", "/a/b", "/c"]), min_size=1))
    return rule


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    members = st.sampled_from([*NAMES, "tag:t1", "tag:t2"])
    g2 = draw(st.lists(members, max_size=3))
    g1 = draw(st.lists(members, max_size=3)) + (["group:g2"] if draw(st.booleans()) else [])
    return {
        "groups": {"group:g1": g1, "group:g2": g2},
        "tagOwners": {"tag:t1": [], "tag:t2": ["group:g1"]},
        "postures": {
            "posture:linux": {"os": ["linux"]},
            "posture:office": {"sourceCidr": ["10.0.0.0/8"]},
        },
        "rules": draw(st.lists(rules(), max_size=8)),
        "http": draw(st.lists(http_rules(), max_size=3)),
    }


@st.composite
def inventories(draw: st.DrawFn) -> dict[str, list[str]]:
    return {name: draw(st.lists(st.sampled_from(TAGS), max_size=2)) for name in NAMES}


def _compile(
    doc: dict[str, Any], identities: dict[str, list[str]]
) -> tuple[CompiledPolicy, Inventory]:
    inventory = Inventory(SERVICES, identities)
    return compile_policy(json.dumps(doc), inventory), inventory


requests = st.tuples(
    st.sampled_from(NAMES),
    st.sampled_from(sorted(SERVICES)),
    st.sampled_from(["dial", "bind"]),
    st.sampled_from([None, *PORTS]),
    st.sampled_from(range(len(REPORTS))),
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(documents(), inventories(), st.lists(requests, min_size=1, max_size=10))
def test_explanation_always_agrees_with_the_verdict(
    doc: dict[str, Any], identities: dict[str, list[str]], asks: list[tuple[Any, ...]]
) -> None:
    policy, inventory = _compile(doc, identities)
    for name, service, action, port, report in asks:
        subject = inventory.identity(name)
        ref = inventory.service(service)
        assert subject is not None and ref is not None
        posture = REPORTS[report]
        verdict = policy.decide(subject, ref, action, port, posture=posture, now=NOW)
        explained = policy.explain(subject, ref, action, port, posture=posture, now=NOW)
        assert explained.verdict == verdict
        decisive = [t for t in explained.rules if t.decisive]
        if decisive:
            assert decisive[0].label in verdict.reason
        else:
            assert "default deny" in verdict.reason


@SETTINGS
@given(documents(), inventories(), st.data())
def test_removing_an_allow_rule_never_grants_more(
    doc: dict[str, Any], identities: dict[str, list[str]], data: st.DataObject
) -> None:
    allows = [i for i, r in enumerate(doc["rules"]) if not r.get("deny")]
    if not allows:
        return
    index = data.draw(st.sampled_from(allows))
    smaller = {**doc, "rules": [r for i, r in enumerate(doc["rules"]) if i != index]}
    before, inventory = _compile(doc, identities)
    after, _ = _compile(smaller, identities)
    for name in NAMES:
        subject = inventory.identity(name)
        assert subject is not None
        for ref in inventory.services():
            for action in ("dial", "bind"):
                for port in (None, *PORTS):
                    for posture in REPORTS:
                        new = after.decide(subject, ref, action, port, posture=posture, now=NOW)
                        if new.allowed:
                            old = before.decide(
                                subject, ref, action, port, posture=posture, now=NOW
                            )
                            assert old.allowed, (new.reason, old.reason)


@SETTINGS
@given(documents(), inventories(), st.sampled_from(range(len(REPORTS))))
def test_views_agree_with_decisions(
    doc: dict[str, Any], identities: dict[str, list[str]], report: int
) -> None:
    policy, inventory = _compile(doc, identities)
    posture = REPORTS[report]
    for subject in inventory.identities():
        view = policy.view(subject, posture=posture, now=NOW)
        for ref in inventory.services():
            access = view.services.get(ref.name)
            for action in ("dial", "bind"):
                ports = access.ports.get(action) if access else None  # type: ignore[call-overload]
                for port in PORTS:
                    allowed = policy.decide(subject, ref, action, port, posture=posture, now=NOW)
                    assert allowed.allowed == (ports is not None and port in ports)
                anything = policy.decide(subject, ref, action, posture=posture, now=NOW)
                assert anything.allowed == (ports is not None)
        other = {"dial": "bind", "bind": "dial"}
        expected: set[str] = set()
        for name, granted in view.services.items():
            for action in granted.actions:
                expected |= policy.holders(name, other[action], inventory)  # type: ignore[index]
        assert view.peers == expected - {subject.name}


@SETTINGS
@given(documents(), inventories())
def test_peers_are_exactly_who_could_connect_ignoring_peer_posture(
    doc: dict[str, Any], identities: dict[str, list[str]]
) -> None:
    policy, inventory = _compile(doc, identities)
    # Brute force: drop postures from allows and posture-gated denies, then ask decide.
    rules = []
    for rule in doc["rules"]:
        if rule.get("deny") and rule.get("posture"):
            continue
        rules.append({k: v for k, v in rule.items() if k != "posture"})
    loose, _ = _compile({**doc, "rules": rules}, identities)
    for ref in inventory.services():
        for action in ("dial", "bind"):
            expected = {
                s.name for s in inventory.identities() if loose.decide(s, ref, action).allowed
            }
            assert policy.holders(ref.name, action, inventory) == expected  # type: ignore[arg-type]


@SETTINGS
@given(documents(), inventories(), documents())
def test_change_impact_covers_every_changed_view(
    old_doc: dict[str, Any], identities: dict[str, list[str]], other: dict[str, Any]
) -> None:
    new_doc = {**old_doc, "rules": old_doc["rules"][1:] + other["rules"][:2], "http": other["http"]}
    if other["groups"]["group:g1"] != old_doc["groups"]["group:g1"]:
        new_doc["groups"] = other["groups"]
    old, inventory = _compile(old_doc, identities)
    new, _ = _compile(new_doc, identities)
    affected = affected_identities(old, new, inventory)
    for subject in inventory.identities():
        for posture in REPORTS:
            before = old.view(subject, posture=posture, now=NOW).to_json()
            after = new.view(subject, posture=posture, now=NOW).to_json()
            if before != after:
                assert subject.name in affected, (subject.name, before, after)


http_asks = st.tuples(
    st.sampled_from(NAMES),
    st.sampled_from(sorted(SERVICES)),
    st.sampled_from(["GET", "POST", "PUT", "get"]),
    st.sampled_from(["/", "/a", "/a/b/c", "/c/../a", "/ab", "bad", "/a%2Fb"]),
)


@SETTINGS
@given(documents(), inventories(), http_asks)
def test_endpoint_fragment_agrees_with_the_controller(
    doc: dict[str, Any], identities: dict[str, list[str]], ask: tuple[str, str, str, str]
) -> None:
    name, service, method, path = ask
    policy, inventory = _compile(doc, identities)
    subject = inventory.identity(name) or Subject(name)
    ref = inventory.service(service) or ServiceRef(service)
    fragment = HttpFragment.from_json(json.loads(json.dumps(policy.http_fragment(ref).to_json())))
    verdict = policy.decide_http(subject, ref, method, path)
    assert fragment.decide(subject, method, path) == verdict
    assert policy.explain_http(subject, ref, method, path).verdict == verdict


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["groups", "rules", "src", "dst", "action", "tests", "http", "postures",
                         "tagOwners", "os", "deny", "accept", "group:g1", "posture:p", "tag:t1"]),
        inner, max_size=4),
    max_leaves=25,
))  # fmt: skip
def test_random_documents_are_refused_only_with_policy_errors(value: Any) -> None:
    with contextlib.suppress(PolicyError):
        compile_policy(json.dumps(value), Inventory(SERVICES))


name_sets = st.builds(
    NameSet,
    st.lists(st.frozensets(st.sampled_from(NAMES)), max_size=3).map(tuple),
    st.frozensets(st.sampled_from(NAMES)),
    st.booleans(),
)


@settings(max_examples=500)
@given(st.lists(name_sets, max_size=5))
def test_name_set_union_matches_plain_sets(parts: list[NameSet]) -> None:
    everyone = frozenset(NAMES)
    expected: set[str] = set()
    for part in parts:
        base = everyone if part.everyone else frozenset().union(*part.parts)
        expected |= base - part.removed
    assert resolve_union(parts, everyone) == expected
