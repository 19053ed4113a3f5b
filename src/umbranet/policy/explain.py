"""Why was X allowed or refused Y? Every rule that mentions X or Y, and what it did.

This answers the users' top complaint about opaque denials (``umbra policy explain``). It is
also the engine's reference model: `explain_access` scans *every* rule in document order with
none of the compiled indexes, and the tests check with random policies that its verdict always
equals `CompiledPolicy.decide` (same outcome, same reason), so an indexing bug cannot hide.

Rules that name neither the subject (by name, one of its groups or tags, or ``*``) nor the
service (by name, attribute or ``*``) are counted, not listed: at 5,000 rules the listing
would bury the few that matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from umbranet.policy.engine import (
    allow_verdict,
    check_request,
    default_verdict,
    deny_verdict,
    miss_why,
    selector_matches,
)
from umbranet.policy.errors import require_aware
from umbranet.policy.model import NO_PORTS, Action, PortSet, Rule, ServiceRef, Subject
from umbranet.policy.posture import PostureEvaluator, PostureReport, PostureResult
from umbranet.policy.verdict import Verdict

if TYPE_CHECKING:
    from umbranet.policy.engine import CompiledPolicy

__all__ = ["Explanation", "RuleTrace", "explain_access", "explain_http"]


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule against one request: did it match, did it decide, and why (not)."""

    label: str
    text: str
    matched: bool
    decisive: bool
    why: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """The verdict of one request with everything that led to it."""

    verdict: Verdict
    request: str
    subject: str
    tags: tuple[str, ...]
    groups: tuple[str, ...]
    service: str
    attributes: tuple[str, ...]
    rules: tuple[RuleTrace, ...]
    postures: tuple[PostureResult, ...]
    unrelated: int

    def render(self) -> str:
        """Plain text for the CLI."""
        word = "ALLOW" if self.verdict.allowed else "DENY"
        lines = [
            f"{word}: {self.request}",
            f"  reason: {self.verdict.reason}",
            f"  subject {self.subject}: tags [{', '.join(self.tags)}], "
            f"groups [{', '.join(self.groups)}]",
            f"  service {self.service}: attributes [{', '.join(self.attributes)}]",
        ]
        if self.rules:
            lines.append("  rules considered:")
        for trace in self.rules:
            mark = "=>" if trace.decisive else ("+ " if trace.matched else "- ")
            lines.append(f"    {mark} {trace.label}: {trace.text}")
            lines.append(f"         {trace.why}")
        if self.unrelated:
            rules = "rule names" if self.unrelated == 1 else "rules name"
            lines.append(f"  {self.unrelated} other {rules} neither subject nor service")
        for result in self.postures:
            lines.append(f"  posture {result.summary}")
            lines.extend(f"         {d}" for d in result.details)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for the REST API."""
        return {
            "allowed": self.verdict.allowed,
            "reason": self.verdict.reason,
            "request": self.request,
            "subject": {"name": self.subject, "tags": list(self.tags), "groups": list(self.groups)},
            "service": {"name": self.service, "attributes": list(self.attributes)},
            "rules": [
                {
                    "rule": t.label,
                    "text": t.text,
                    "matched": t.matched,
                    "decisive": t.decisive,
                    "why": t.why,
                }
                for t in self.rules
            ],
            "postures": [
                {"name": r.name, "outcome": r.outcome, "details": list(r.details)}
                for r in self.postures
            ],
            "unrelated_rules": self.unrelated,
        }


def explain_access(
    policy: CompiledPolicy,
    subject: Subject,
    service: ServiceRef,
    action: str,
    port: int | None = None,
    *,
    posture: PostureReport | None = None,
    now: datetime | None = None,
) -> Explanation:
    """Explain a dial/bind request by scanning every rule (see the module docstring)."""
    now = require_aware(now)
    groups = policy.groups_of(subject)
    on = f" port {port}" if port is not None else ""
    request = f"{subject.name} {action} {service.name}{on}"
    early = check_request(action, port)
    if early is not None:
        return _explanation(
            early,
            request,
            subject=subject,
            groups=groups,
            service=service,
            traces=[],
            postures=[],
            unrelated=0,
        )
    act: Action = "dial" if action == "dial" else "bind"
    evaluator = PostureEvaluator(policy.policy.postures, posture, now)
    related: list[_Match] = []
    unrelated = 0
    for rule in policy.rules:
        src = any(selector_matches(s, subject, groups) for s in rule.src)
        matching = [d for d in rule.dst if d.matches(service)]
        if not src and not matching:
            unrelated += 1
            continue
        ports = NO_PORTS
        for selector in matching:
            ports = ports | selector.ports
        related.append(_Match(rule, src, bool(matching), ports))
    for match in related:
        if match.candidate(act) and match.rule.postures:
            match.outcome, match.posture_text = evaluator.check(match.rule.postures)
    verdict = _decide(related, subject, service, act, port)
    traces = [_trace(m, act) for m in related]
    for name in sorted({n for m in related for n in m.rule.postures}):
        evaluator.result(name)
    postures = [evaluator.results[n] for n in sorted(evaluator.results)]
    return _explanation(
        verdict,
        request,
        subject=subject,
        groups=groups,
        service=service,
        traces=traces,
        postures=postures,
        unrelated=unrelated,
    )


def explain_http(
    policy: CompiledPolicy, subject: Subject, service: ServiceRef, method: str, path: str
) -> Explanation:
    """Explain an HTTP request with the service's fragment (what the endpoint enforces)."""
    fragment = policy.http_fragment(service)
    verdict, traces = fragment.trace(subject, method, path)
    rules = [RuleTrace(t.grant.label, t.grant.text, t.matched, t.decisive, t.why) for t in traces]
    unrelated = len(policy.policy.http) - len(fragment.grants)
    request = f"{subject.name} {method.upper()} {path[:200]} on {service.name}"
    groups = policy.groups_of(subject)
    return _explanation(
        verdict,
        request,
        subject=subject,
        groups=groups,
        service=service,
        traces=rules,
        postures=[],
        unrelated=unrelated,
    )


class _Match:
    """A rule's relation to the request, then what the decision order made of it."""

    __slots__ = (
        "decisive", "dst", "matched", "outcome", "ports", "posture_text", "rule", "src", "why",
    )  # fmt: skip

    def __init__(self, rule: Rule, src: bool, dst: bool, ports: PortSet) -> None:
        self.rule = rule
        self.src = src
        self.dst = dst
        self.ports = ports
        self.outcome: bool | None = True
        self.posture_text = ""
        self.matched = False
        self.decisive = False
        self.why = ""

    def candidate(self, action: Action) -> bool:
        return self.src and self.dst and self.rule.action == action


def _decide(
    related: list[_Match], subject: Subject, service: ServiceRef, act: Action, port: int | None
) -> Verdict:
    """The decision order of `engine`, written out over the linear list; unlike `decide` it
    looks at every candidate, to say what each one did."""
    verdict: Verdict | None = None
    denied = NO_PORTS
    denials: list[Rule] = []
    for match in related:
        if not match.candidate(act) or not match.rule.deny:
            continue
        if match.outcome is False:
            match.why = f"does not apply: {match.posture_text}"
            continue
        if (port in match.ports) if port is not None else match.ports.is_all:
            match.matched = True
            if verdict is None:
                match.decisive = True
                verdict = deny_verdict(match.rule)
            continue
        denied = denied | match.ports
        denials.append(match.rule)
        match.why = f"denies ports {match.ports} only"
    near: tuple[Rule, str] | None = None
    for match in related:
        if not match.candidate(act) or match.rule.deny:
            continue
        fits = (port in match.ports) if port is not None else bool(match.ports - denied)
        if match.outcome is True and fits:
            match.matched = True
            if verdict is None:
                match.decisive = True
                verdict = allow_verdict(match.rule)
            continue
        match.why = miss_why(
            match.ports,
            port,
            outcome=match.outcome,
            posture_text=match.posture_text,
            denied=denied,
            denials=denials,
        )
        if near is None:
            near = (match.rule, match.why)
    return verdict or default_verdict(subject, service, act, port, near)


def _trace(match: _Match, act: Action) -> RuleTrace:
    rule = match.rule
    verb = "denies" if rule.deny else "allows"
    if match.decisive:
        why = f"{verb} this request (decisive)"
    elif match.matched:
        why = f"{verb} too, but an earlier rule decided"
    elif rule.action != act:
        why = f"is a {rule.action} rule"
    elif not match.src:
        why = "src does not include the subject"
    elif not match.dst:
        why = "dst does not include the service"
    else:
        why = match.why
    return RuleTrace(rule.label, rule.text, match.matched, match.decisive, why)


def _explanation(
    verdict: Verdict,
    request: str,
    *,
    subject: Subject,
    groups: frozenset[str],
    service: ServiceRef,
    traces: list[RuleTrace],
    postures: list[PostureResult],
    unrelated: int,
) -> Explanation:
    return Explanation(
        verdict=verdict,
        request=request,
        subject=subject.name,
        tags=tuple(sorted(subject.tags)),
        groups=tuple(sorted(groups)),
        service=service.name,
        attributes=tuple(sorted(service.attributes)),
        rules=tuple(traces),
        postures=tuple(postures),
        unrelated=unrelated,
    )
