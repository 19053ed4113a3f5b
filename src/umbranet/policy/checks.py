"""The policy's own ``tests``: assertions a document must pass before it is accepted.

Each test names a subject (an identity name, with its tags from the test or else from the
inventory), optionally a posture report and a time (``at``; default `DEFAULT_TEST_TIME`, never
the wall clock), and lists requests that must be accepted and requests that must be denied:

    {"src": "alice", "accept": ["svc:billing:443", "bind svc:db", "GET svc:web/public"],
     "deny": ["svc:db:5432", "net 10.1.2.3:22/tcp"]}

A failure names the entry, what was expected and the verdict's reason, so the person saving
the policy sees which rule to look at.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from umbranet.policy.inventory import Inventory
from umbranet.policy.model import PolicyTest, ServiceRef, Subject, TestCase
from umbranet.policy.verdict import Verdict

if TYPE_CHECKING:
    from umbranet.policy.engine import CompiledPolicy

__all__ = ["TestFailure", "run_policy_tests"]


@dataclass(frozen=True, slots=True)
class TestFailure:
    """One test entry whose verdict was not the expected one."""

    __test__ = False  # not a pytest class, whatever the name says

    test: int
    entry: str
    expected: str  # "accept" or "deny"
    verdict: Verdict
    line: int | None
    column: int | None

    @property
    def summary(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        got = "allowed" if self.verdict.allowed else "denied"
        return (
            f"tests[{self.test}]{where}: expected {self.expected} for {self.entry!r}, "
            f"but {got}: {self.verdict.reason}"
        )


def run_policy_tests(policy: CompiledPolicy, inventory: Inventory) -> list[TestFailure]:
    """Evaluate every test entry; return the failures (empty when all pass)."""
    failures: list[TestFailure] = []
    for test in policy.policy.tests:
        subject = _subject(test, inventory)
        for expected, cases in (("accept", test.accept), ("deny", test.deny)):
            for case in cases:
                verdict = _verdict(policy, test, subject, case, inventory)
                if verdict.allowed != (expected == "accept"):
                    failures.append(
                        TestFailure(
                            test.index, case.text, expected, verdict, case.line, case.column
                        )
                    )
    return failures


def _subject(test: PolicyTest, inventory: Inventory) -> Subject:
    if test.tags is not None:
        return Subject(test.src, test.tags)
    known = inventory.identity(test.src)
    return known if known is not None else Subject(test.src)


def _verdict(
    policy: CompiledPolicy,
    test: PolicyTest,
    subject: Subject,
    case: TestCase,
    inventory: Inventory,
) -> Verdict:
    if case.packet is not None:
        from umbranet.policy.network import NetTarget, decide_packet

        host, port, proto = case.packet
        target = NetTarget(ipaddress.ip_address(host))
        return decide_packet(policy, subject, target, proto, port)
    service = inventory.service(case.service) or ServiceRef(case.service)
    if case.method is not None and case.path is not None:
        connect = policy.decide(subject, service, "dial", posture=test.posture, now=test.at)
        if not connect.allowed:
            return connect
        return policy.decide_http(subject, service, case.method, case.path)
    return policy.decide(
        subject, service, case.action, case.port, posture=test.posture, now=test.at
    )
