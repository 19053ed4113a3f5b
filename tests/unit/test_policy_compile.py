"""Validation: a policy that is malformed, names unknown things or fails its tests is refused,
with the code, the line and column, and the reason."""

from __future__ import annotations

import pytest

from umbranet.policy import Inventory, PolicyError, compile_policy

INVENTORY = Inventory(
    services={"billing": ["payments"], "db": [], "web": ["web", "team:front"]},
    identities={"alice": [], "bob": ["tag:ci"], "dbhost": ["db"]},
)

OK_HEAD = '{"tagOwners": {"tag:ci": [], "tag:db": []}, "groups": {"group:eng": ["alice"]}, '

REFUSED = [
    # (document, code, line, column, words in the reason)
    ("[]", "policy_schema", 1, 1, "must be an object"),
    ('{"rule": []}', "policy_schema", 1, 2, "unknown key 'rule'"),
    ('{"rules": {}}', "policy_schema", 1, 11, "rules must be a list"),
    ('{"rules": [{"src": ["*"], "dst": ["*"]}]}', "policy_schema", 1, 12, "needs 'action'"),
    ('{"rules": [{"action": "connect", "src": ["*"], "dst": ["*"]}]}', "policy_schema", 1, 23,
     "'dial' or 'bind'"),
    ('{"rules": [{"action": "dial", "src": [], "dst": ["*"]}]}', "policy_schema", 1, 38,
     "must not be empty"),
    ('{"rules": [{"action": "dial", "src": ["Alice!"], "dst": ["*"]}]}', "policy_selector", 1, 39,
     "not a source selector"),
    ('{"rules": [{"action": "dial", "src": ["*"], "dst": ["billing"]}]}', "policy_selector", 1, 53,
     "not a service selector"),
    ('{"rules": [{"action": "dial", "src": ["*"], "dst": ["svc:db:0"]}]}', "policy_ports", 1, 53,
     "within 1-65535"),
    ('{"rules": [{"action": "dial", "src": ["*"], "dst": ["svc:db:9-3"]}]}', "policy_ports", 1, 53,
     "low first"),
    ('{"rules": [{"action": "dial", "src": ["*"], "dst": ["svc:db:"]}]}', "policy_ports", 1, 53,
     "empty port list"),
    ('{"rules": [{"action": "dial", "src": ["*"], "dst": ["svc:db:http"]}]}', "policy_ports", 1, 53,
     "not a port list"),
    ('{"rules": [{"action": "dial", "src": ["*"], "dst": ["*"], "deny": "yes"}]}', "policy_schema",
     1, 67, "deny must be true or false"),
    ('{"rules": [{"action": "dial", "src": ["group:ops"], "dst": ["*"]}]}', "policy_unknown_group",
     1, 39, "group:ops is not defined"),
    ('{"rules": [{"action": "dial", "src": ["tag:ci"], "dst": ["*"]}]}', "policy_unknown_tag", 1,
     39, "tag:ci is not declared in tagOwners"),
    ('{"rules": [{"action": "dial", "src": ["*"], "dst": ["svc:biling"]}]}',
     "policy_unknown_service", 1, 53, "no service is named 'biling'"),
    ('{"rules": [{"action": "dial", "src": ["*"], "dst": ["attr:nope:443"]}]}',
     "policy_unknown_attribute", 1, 53, "no service carries the attribute 'nope'"),
    ('{"rules": [{"action": "dial", "src": ["*"], "dst": ["*"], "posture": ["posture:x"]}]}',
     "policy_unknown_posture", 1, 12, "posture:x, which is not defined"),
    ('{"groups": {"group:a": ["group:b"], "group:b": ["group:a"]}}', "policy_group_cycle", 1, 49,
     "group:a -> group:b -> group:a"),
    ('{"groups": {"group:a": ["group:a"]}}', "policy_group_cycle", 1, 25, "includes itself"),
    ('{"groups": {"eng": ["alice"]}}', "policy_selector", 1, 13, "group:<name>"),
    ('{"groups": {"group:a": ["*"]}}', "policy_selector", 1, 25, "not a source selector"),
    ('{"tagOwners": {"ci": []}}', "policy_selector", 1, 16, "tag:<name>"),
    ('{"tagOwners": {"tag:a": ["tag:a"]}}', "policy_selector", 1, 26, "not tags"),
    ('{"postures": {"posture:p": {"os": ["linux"], "ram": 4}}}', "policy_schema", 1, 46,
     "unknown key 'ram'"),
    ('{"postures": {"posture:p": {"osVersion": "6.1"}}}', "policy_posture", 1, 42,
     "version requirement"),
    ('{"postures": {"posture:p": {"sourceCidr": ["10.0.0.0/33"]}}}', "policy_posture", 1, 44,
     "not a CIDR"),
    ('{"postures": {"posture:p": {"certAgeMaxHours": -1}}}', "policy_posture", 1, 48,
     "positive number"),
    ('{"postures": {"posture:p": {"timeWindow": {"start": "8:00", "end": "18:00"}}}}',
     "policy_posture", 1, 53, "HH:MM"),
    ('{"postures": {"posture:p": {"timeWindow": {"start": "08:00", "end": "18:00",\n'
     '"tz": "Mars/Olympus"}}}}', "policy_posture", 2, 7, "unknown time zone"),
    ('{"postures": {"posture:p": {"timeWindow": {"days": ["someday"], "start": "08:00",'
     ' "end": "09:00"}}}}', "policy_posture", 1, 53, "not a day"),
    ('{"http": [{"src": ["*"], "dst": ["svc:web:80"]}]}', "policy_selector", 1, 34,
     "without ports"),
    ('{"http": [{"src": ["*"], "dst": ["svc:web"], "methods": ["get"]}]}', "policy_http", 1, 58,
     "not an HTTP method"),
    ('{"http": [{"src": ["*"], "dst": ["svc:web"], "paths": ["public"]}]}', "policy_http", 1, 56,
     "not a path prefix"),
    ('{"tests": [{"src": "alice", "accept": ["svc:nope"]}]}', "policy_unknown_service", 1, 40,
     "unknown service 'nope'"),
    ('{"tests": [{"src": "alice", "accept": ["connect svc:db"]}]}', "policy_test_invalid", 1, 40,
     "neither dial, bind nor an HTTP method"),
    ('{"tests": [{"src": "alice", "accept": ["svc:db:99999"]}]}', "policy_test_invalid", 1, 40,
     "one number 1-65535"),
    ('{"tests": [{"src": "alice", "at": "2024-01-01T09:00:00"}]}', "policy_test_invalid", 1, 35,
     "with a zone"),
    ('{"tests": [{"src": "alice", "tags": ["tag:zz"]}]}', "policy_unknown_tag", 1, 12,
     "tag:zz, which is not declared"),
    ('{"tests": [{"src": "alice", "accept": ["svc:db"]}]}', "policy_tests_failed", 1, 40,
     "expected accept for 'svc:db', but denied: no rule allows alice to dial db"),
    ("{\n  // nothing allowed\n  \"tests\": [\n    {\"src\": \"bob\", \"deny\": [],\n"
     "     \"accept\": [\"bind svc:db\"]},\n  ],\n}", "policy_tests_failed", 5, 17,
     "expected accept for 'bind svc:db'"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "code", "line", "column", "reason"), REFUSED)
def test_refused_with_place_and_reason(
    text: str, code: str, line: int, column: int, reason: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy(text, INVENTORY)
    error = caught.value
    assert error.code == code, str(error)
    assert reason in error.reason, str(error)
    assert (error.line, error.column) == (line, column), str(error)


def test_every_failed_test_is_listed() -> None:
    text = OK_HEAD + '"tests": [{"src": "alice", "accept": ["svc:db", "svc:web"], "deny": []}]}'
    with pytest.raises(PolicyError) as caught:
        compile_policy(text, INVENTORY)
    assert caught.value.reason.startswith("2 policy tests fail; first: tests[0]")
    assert len(caught.value.details) == 2


def test_failing_tests_can_be_listed_without_refusing() -> None:
    text = OK_HEAD + '"tests": [{"src": "alice", "accept": ["svc:db"]}]}'
    compiled = compile_policy(text, INVENTORY, run_tests=False)
    [failure] = compiled.run_tests()
    assert failure.expected == "accept"
    assert not failure.verdict.allowed
    assert failure.summary.startswith("tests[0] (line 1): expected accept for 'svc:db'")


def test_a_passing_policy_compiles() -> None:
    text = """
    // who may do what
    {
      "groups": {"group:eng": ["alice", "group:sre", "tag:ci"], "group:sre": ["carol"]},
      "tagOwners": {"tag:ci": ["group:eng"], "tag:db": []},
      "postures": {"posture:corp": {"os": ["linux"]}},
      "rules": [
        {"action": "dial", "src": ["group:eng"], "dst": ["svc:billing:443", "attr:web:*"]},
        {"action": "bind", "src": ["tag:db"], "dst": ["svc:db"]},
        {"action": "dial", "src": ["alice"], "dst": ["svc:db"], "posture": ["posture:corp"]},
      ],
      "http": [{"src": ["*"], "dst": ["svc:web"], "methods": ["GET"], "paths": ["/public/"]}],
      "tests": [
        {"src": "alice", "accept": ["svc:billing:443", "GET svc:web/public/a"],
         "deny": ["svc:billing:80", "POST svc:web/public", "svc:db:5432", "bind svc:db"]},
        {"src": "alice", "posture": {"os": "Linux"}, "accept": ["svc:db:5432"]},
        {"src": "bob", "accept": ["svc:web"], "deny": ["svc:db"]},  // bob is tag:ci
        {"src": "dbhost", "accept": ["bind svc:db"]},
        {"src": "stranger", "tags": ["tag:db"], "accept": ["bind svc:db"], "deny": ["svc:web"]},
      ],
    }
    """
    compiled = compile_policy(text, INVENTORY)
    assert compiled.run_tests() == []
    assert len(compiled.rules) == 3
    # carol is in a group but not (yet) in the network: said, not refused.
    assert compiled.warnings == ("'carol' (line 4) is not the name of any identity (yet)",)
    assert len(compiled.digest) == 64


def test_names_and_tags_that_match_nobody_are_warned_about() -> None:
    text = (
        '{"tagOwners": {"tag:ghost": [], "tag:ci": []}, "rules": ['
        '{"action": "dial", "src": ["alcie", "tag:ghost", "tag:ci"], "dst": ["*"]}]}'
    )
    warnings = compile_policy(text, INVENTORY).warnings
    assert warnings == (
        "'alcie' (line 1) is not the name of any identity (yet)",
        "tag:ghost (line 1) is carried by no identity (yet)",
    )
    # Without an inventory there is nothing to compare with, so nothing is said.
    assert compile_policy(text).warnings == ()


def test_attribute_selector_may_carry_colons() -> None:
    text = '{"rules": [{"action": "dial", "src": ["*"], "dst": ["attr:team:front"]}]}'
    compiled = compile_policy(text, INVENTORY)
    assert compiled.rules[0].dst[0].value == "team:front"
    assert compiled.rules[0].dst[0].ports.is_all


def test_error_renders_with_code_and_place() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy('{"rules": [{"action": "dial", "src": ["*"], "dst": ["svc:x"]}]}')
    assert str(caught.value) == "policy_unknown_service: line 1, column 53: no service is named 'x'"


def test_non_text_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy(b"{}")  # type: ignore[arg-type]
    assert caught.value.code == "policy_syntax"
