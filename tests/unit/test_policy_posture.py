"""Posture conditions: three-valued (holds, fails, unknown), each finding in words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from umbranet.policy import Inventory, PostureReport, ServiceRef, Subject, compile_policy
from umbranet.policy.posture import VersionReq, parse_version

MONDAY_NOON = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def _posture(body: str) -> object:
    text = f'{{"postures": {{"posture:p": {body}}}}}'
    return compile_policy(text).policy.postures["posture:p"]


FULL = PostureReport(
    os="Linux",
    os_version="6.1.0-18-amd64",
    sdk_version="v0.2.1",
    cert_not_before=MONDAY_NOON - timedelta(hours=3),
    source_ip="10.1.2.3",
    processes=frozenset({"edr-agent", "sshd"}),
)

CASES = [
    # body, report, now, outcome, first detail
    ('{"os": ["linux", "darwin"]}', FULL, None, True, "ok: os 'Linux' in [darwin, linux]"),
    ('{"os": ["darwin"]}', FULL, None, False, "os 'Linux' not in [darwin]"),
    ('{"os": ["darwin"]}', None, None, None, "os not reported"),
    ('{"osVersion": ">=6.1"}', FULL, None, True, "satisfies >=6.1"),
    ('{"osVersion": ">6.1"}', FULL, None, False, "does not satisfy >6.1"),
    ('{"osVersion": "==6.1"}', FULL, None, True, "satisfies ==6.1"),
    ('{"osVersion": "<6"}', FULL, None, False, "does not satisfy <6"),
    ('{"osVersion": ">=6.1"}', PostureReport(os_version="unknown"), None, False,
     "is not a version"),
    ('{"sdkVersion": ">=0.2"}', FULL, None, True, "sdk version 'v0.2.1' satisfies >=0.2"),
    ('{"sdkVersion": "!=0.2.1"}', FULL, None, False, "does not satisfy"),
    ('{"certAgeMaxHours": 24}', FULL, MONDAY_NOON, True, "ok: certificate age 3.0h <= 24.0h"),
    ('{"certAgeMaxHours": 2}', FULL, MONDAY_NOON, False, "certificate age 3.0h > 2.0h"),
    ('{"certAgeMaxHours": 2}', FULL, None, None, "certificate age unknown"),
    ('{"sourceCidr": ["10.0.0.0/8", "fd00::/8"]}', FULL, None, True, "in [10.0.0.0/8, fd00::/8]"),
    ('{"sourceCidr": ["192.168.0.0/16"]}', FULL, None, False, "source 10.1.2.3 not in"),
    ('{"sourceCidr": ["fd00::/8"]}', PostureReport(source_ip="fd00::1"), None, True, "ok: source"),
    ('{"sourceCidr": ["10.0.0.0/8"]}', PostureReport(source_ip="nope"), None, False,
     "not an IP address"),
    ('{"processRunning": ["edr-agent"]}', FULL, None, True, "required processes running"),
    ('{"processRunning": ["edr-agent", "av"]}', FULL, None, False, "process 'av' not running"),
    ('{"processRunning": ["av"]}', PostureReport(), None, None, "processes not reported"),
    ('{"timeWindow": {"start": "08:00", "end": "18:00"}}', None, MONDAY_NOON, True,
     "ok: Mon 12:00 UTC inside"),
    ('{"timeWindow": {"start": "08:00", "end": "18:00"}}', None, None, None, "time unknown"),
    ('{"timeWindow": {"days": ["sat", "sun"], "start": "08:00", "end": "18:00"}}', None,
     MONDAY_NOON, False, "outside sat,sun 08:00-18:00 UTC"),
    ('{"timeWindow": {"start": "13:00", "end": "24:00", "tz": "Europe/Paris"}}', None,
     MONDAY_NOON, True, "Mon 13:00 Europe/Paris inside"),
    ('{"timeWindow": {"start": "14:00", "end": "24:00", "tz": "Europe/Paris"}}', None,
     MONDAY_NOON, False, "outside"),
    # a window across midnight belongs to the day it starts on
    ('{"timeWindow": {"days": ["sun"], "start": "22:00", "end": "06:00"}}', None,
     datetime(2024, 1, 1, 3, 0, tzinfo=UTC), True, "inside"),
    ('{"timeWindow": {"days": ["mon"], "start": "22:00", "end": "06:00"}}', None,
     datetime(2024, 1, 1, 3, 0, tzinfo=UTC), False, "outside"),
    ('{"timeWindow": {"days": ["mon"], "start": "22:00", "end": "06:00"}}', None,
     datetime(2024, 1, 1, 23, 0, tzinfo=UTC), True, "inside"),
    # conjunction: a failure wins over an unknown, an unknown over success
    ('{"os": ["linux"], "processRunning": ["av"]}', PostureReport(os="linux"), None, None,
     "processes not reported"),
    ('{"os": ["darwin"], "processRunning": ["av"]}', PostureReport(os="linux"), None, False,
     "os 'linux' not in [darwin]"),
    ("{}", None, None, True, ""),
]  # fmt: skip


@pytest.mark.parametrize(("body", "report", "now", "outcome", "detail"), CASES)
def test_conditions(
    body: str,
    report: PostureReport | None,
    now: datetime | None,
    outcome: bool | None,
    detail: str,
) -> None:
    result = _posture(body).evaluate(report, now)  # type: ignore[attr-defined]
    assert result.outcome is outcome, result.details
    assert detail in (result.details[0] if result.details else "")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("6.1", (6, 1)), ("6.1.0-18-amd64", (6, 1, 0)), ("v0.2", (0, 2)), ("abc", None), ("", None)],
)
def test_parse_version(text: str, parsed: tuple[int, ...] | None) -> None:
    assert parse_version(text) == parsed


@pytest.mark.parametrize(
    ("requirement", "reported", "ok"),
    [
        (">=1.2", (1, 2), True),
        (">=1.2", (1, 2, 0), True),
        (">=1.2", (1, 1, 9), False),
        ("<2", (1, 99), True),
        ("<=1", (1, 0, 0), True),
        ("!=1.0", (1,), False),
        (">1", (1, 0, 1), True),
    ],
)
def test_version_comparisons(requirement: str, reported: tuple[int, ...], ok: bool) -> None:
    assert VersionReq.parse(requirement).check(reported) is ok


@pytest.mark.parametrize("bad", ["1.2", ">=", ">=x", "=>1", ">=1.2 beta"])
def test_version_requirement_needs_operator_and_number(bad: str) -> None:
    with pytest.raises(ValueError, match="version requirement"):
        VersionReq.parse(bad)


def test_tests_can_pin_posture_and_time() -> None:
    text = """{
      "postures": {"posture:day": {"timeWindow": {"start": "08:00", "end": "18:00"},
                                   "certAgeMaxHours": 12}},
      "rules": [{"action": "dial", "src": ["*"], "dst": ["svc:db"], "posture": ["posture:day"]}],
      "tests": [
        {"src": "a", "posture": {"certAgeHours": 1}, "accept": ["svc:db"]},
        {"src": "a", "posture": {"certAgeHours": 13}, "deny": ["svc:db"]},
        {"src": "a", "at": "2024-01-01T20:00:00Z", "posture": {"certAgeHours": 1},
         "deny": ["svc:db"]},
        {"src": "a", "at": "2024-01-01T20:00:00+10:00", "posture": {"certAgeHours": 1},
         "accept": ["svc:db"]},
      ],
    }"""
    policy = compile_policy(text, Inventory(services={"db": []}))
    assert policy.run_tests() == []
    verdict = policy.decide(Subject("a"), ServiceRef("db"), "dial", posture=None, now=None)
    assert "posture:day is unknown" in verdict.reason
