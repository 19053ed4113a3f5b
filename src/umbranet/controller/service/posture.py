"""Endpoint posture: what each endpoint reports about itself, and when access must be re-checked.

Endpoints report their OS, OS version, SDK version and running process names (`record`); the
controller adds what it knows itself: the source address the report came from and the
``not_before`` of the certificate the endpoint used. Decisions (tickets, listings, router
re-checks) read the newest report through `report_of`.

A posture can change its outcome without anything being saved: a process stops, a certificate
ages past a limit, a time window closes. So `PostureWatch` keeps the last outcome of every
named posture for every endpoint, and says when one changed; the caller then bumps the epoch,
which makes routers re-check their live circuits (those no longer allowed are closed) and
endpoints fetch fresh tickets. It runs when a report changes and at least every minute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from umbranet.controller.store import Identity, Store
from umbranet.policy import CompiledPolicy, PostureReport
from umbranet.policy.posture import PostureEvaluator

__all__ = ["PostureWatch", "outcomes_differ", "record", "report_of"]

REPORTED_FIELDS = ("os", "os_version", "sdk_version", "processes")

Outcome = tuple[bool | None, ...]
"""One endpoint's outcome for each named posture, in name order."""


def record(
    identity: Identity,
    reported: Mapping[str, Any],
    *,
    source_ip: str | None,
    cert_not_before: datetime | None,
    now: datetime,
) -> bool:
    """Store ``reported`` (already validated) as the identity's posture; True if it changed.

    Only the reported fields and the controller's own observations are kept; the time of the
    report is stored separately so an unchanged report does not count as a change.
    """
    fields: dict[str, Any] = {k: reported.get(k) for k in REPORTED_FIELDS}
    if fields["processes"] is not None:
        fields["processes"] = sorted(set(fields["processes"]))
    fields["source_ip"] = source_ip
    fields["cert_not_before"] = cert_not_before.isoformat() if cert_not_before else None
    changed = identity.posture != fields
    identity.posture = fields
    identity.posture_at = now
    return changed


def report_of(identity: Identity) -> PostureReport | None:
    """The identity's newest posture, as the policy engine reads it; None if never reported."""
    data = identity.posture
    if not data:
        return None
    processes = data.get("processes")
    not_before = data.get("cert_not_before")
    return PostureReport(
        os=data.get("os"),
        os_version=data.get("os_version"),
        sdk_version=data.get("sdk_version"),
        cert_not_before=datetime.fromisoformat(not_before) if not_before else None,
        source_ip=data.get("source_ip"),
        processes=frozenset(processes) if processes is not None else None,
    )


def outcomes_differ(
    policy: CompiledPolicy | None,
    before: PostureReport | None,
    after: PostureReport | None,
    now: datetime,
) -> bool:
    """Would any named posture of ``policy`` judge the two reports differently now?

    A changed report only matters when an outcome moved (a process list changes often; most
    changes touch no posture), so only then is access re-checked network-wide.
    """
    if policy is None or not policy.policy.postures:
        return False
    names = sorted(policy.policy.postures)
    return _outcome(policy, names, before, now) != _outcome(policy, names, after, now)


class PostureWatch:
    """The last outcome of each named posture per endpoint, to tell when one changed."""

    def __init__(self) -> None:
        self._seen: dict[str, Outcome] = {}
        self._policy_key: object = None

    def changed(self, store: Store, policy: CompiledPolicy | None, now: datetime) -> list[str]:
        """Identities whose posture outcomes differ from the last call (empty on the first
        call for a policy, which only records them: the policy change itself bumped)."""
        if policy is None or not policy.policy.postures:
            self._seen, self._policy_key = {}, None
            return []
        fresh = policy is not self._policy_key
        outcomes = _outcomes(store.identities(), policy, now)
        moved = [] if fresh else [n for n, o in outcomes.items() if self._seen.get(n) != o]
        self._seen, self._policy_key = outcomes, policy
        return sorted(moved)


def _outcome(
    policy: CompiledPolicy, names: list[str], report: PostureReport | None, now: datetime
) -> Outcome:
    evaluator = PostureEvaluator(policy.policy.postures, report, now)
    return tuple(evaluator.result(n).outcome for n in names)


def _outcomes(
    identities: Iterable[Identity], policy: CompiledPolicy, now: datetime
) -> dict[str, Outcome]:
    names = sorted(policy.policy.postures)
    unreported: Outcome | None = None
    out: dict[str, Outcome] = {}
    for identity in identities:
        if not identity.enabled:
            continue
        report = report_of(identity)
        if report is None:
            # Every silent endpoint gets the same outcomes: evaluate them once.
            if unreported is None:
                unreported = _outcome(policy, names, None, now)
            out[identity.name] = unreported
        else:
            out[identity.name] = _outcome(policy, names, report, now)
    return out
