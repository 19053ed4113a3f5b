"""The interim attribute policy and the controller's single decision point (logged, counted)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbranet import policy
from umbranet.controller import authz
from umbranet.controller.metrics import Metrics
from umbranet.policy import Verdict, decide_access


@dataclass
class Svc:
    name: str = "db"
    dial_attributes: list[str] = field(default_factory=lambda: ["eng"])
    bind_attributes: list[str] = field(default_factory=lambda: ["dbhost"])


def test_dial_allowed_with_a_dial_attribute() -> None:
    verdict = decide_access(["ops", "eng"], Svc(), "dial")
    assert verdict == Verdict(True, "attribute 'eng' grants dial on 'db'")


def test_dial_attribute_does_not_grant_bind() -> None:
    verdict = decide_access(["eng"], Svc(), "bind")
    assert not verdict.allowed
    assert "dbhost" in verdict.reason


def test_service_without_attributes_grants_nobody() -> None:
    verdict = decide_access(["eng"], Svc(dial_attributes=[]), "dial")
    assert not verdict.allowed
    assert "no attribute" in verdict.reason


def test_unknown_action_is_denied_with_reason() -> None:
    verdict = decide_access(["eng"], Svc(), "admin")
    assert not verdict.allowed
    assert "unknown action" in verdict.reason


@given(
    held=st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=4),
    granting=st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=4),
    action=st.sampled_from(["dial", "bind"]),
)
def test_allowed_exactly_when_attributes_intersect(
    held: list[str], granting: list[str], action: str
) -> None:
    svc = Svc(dial_attributes=granting, bind_attributes=granting)
    verdict = decide_access(held, svc, action)
    assert verdict.allowed == bool(set(held) & set(granting))
    assert verdict.reason


def test_policy_package_exports() -> None:
    interim = {"ACTIONS", "Action", "ServiceGrants", "Verdict", "decide_access"}
    assert interim <= set(policy.__all__)


def test_authz_logs_and_counts_every_verdict(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="umbranet.controller.authz"):
        allowed = authz.decide_access(["eng"], Svc(), "dial", subject="s", metrics=metrics)
        denied = authz.decide_access(["eng"], Svc(), "bind", subject="s", metrics=metrics)
    assert allowed.allowed and not denied.allowed
    assert (
        metrics.get("umbra_access_verdicts_total", action="dial", outcome="allow", purpose="ticket")
        == 1
    )
    assert (
        metrics.get("umbra_access_verdicts_total", action="bind", outcome="deny", purpose="ticket")
        == 1
    )
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "verdict=deny" in messages[1] and denied.reason in messages[1]
