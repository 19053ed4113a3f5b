"""The one place the controller decides access; every verdict is logged and counted.

The decision itself is pure: the HuJSON policy in force (`ActivePolicy`, when an admin has
saved one) or, before any policy exists, the interim attribute rule
`umbranet.policy.decide_access`. This wrapper adds the side effects the house rules require
(every verdict logged and counted), so tickets, listings and router re-checks all agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from umbranet.controller.logfmt import safe
from umbranet.controller.metrics import Metrics
from umbranet.policy import (
    CompiledPolicy,
    PostureReport,
    ServiceGrants,
    ServiceRef,
    Subject,
    Verdict,
)
from umbranet.policy import decide_access as _policy_decide

__all__ = ["ActivePolicy", "decide_access"]

log = logging.getLogger("umbranet.controller.authz")


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    """The policy version in force, compiled; ``error`` is set if it no longer compiles
    against the network (a service it names was deleted), and then everything is denied."""

    version: int
    compiled: CompiledPolicy | None
    error: str | None = None


def decide_access(
    identity_attributes: Iterable[str],
    service: ServiceGrants,
    action: str,
    *,
    subject: str = "-",
    purpose: str = "ticket",
    metrics: Metrics | None = None,
    identity_name: str | None = None,
    policy: ActivePolicy | None = None,
    posture: PostureReport | None = None,
    port: int | None = None,
    now: datetime | None = None,
) -> Verdict:
    """Decide whether `subject` (holding `identity_attributes`) may `action` the `service`.

    `purpose` says why it was asked (``ticket`` for a grant, ``listing`` for ``/v1/me``) so
    the counters can tell real grants from previews. With a `policy`, the decision is the
    policy's (the subject is ``identity_name`` with its attributes as tags, the service carries
    the union of its dial and bind attributes, ``posture`` is the endpoint's newest report,
    ``port`` the service port asked for); without one, the interim attribute rule (which
    knows no ports). The verdict is counted in `metrics`, the app's registry; a caller
    without one (a unit test, a preview) is not counted anywhere: there is no global registry.
    """
    if policy is None:
        verdict = _policy_decide(identity_attributes, service, action)
    else:
        verdict = _policy_verdict(
            policy,
            identity_name or subject,
            identity_attributes,
            service,
            action,
            posture=posture,
            port=port,
            now=now,
        )
    outcome = "allow" if verdict.allowed else "deny"
    if metrics is not None:
        metrics.verdicts.labels(action=action, outcome=outcome, purpose=purpose).inc()
    level = logging.INFO if purpose == "ticket" else logging.DEBUG
    log.log(
        level,
        "access verdict=%s identity=%s service=%s action=%s purpose=%s reason=%s",
        outcome,
        safe(subject),
        safe(service.name),
        safe(action),
        purpose,
        safe(verdict.reason),
    )
    return verdict


def service_ref(service: ServiceGrants) -> ServiceRef:
    """The policy engine's view of a service row: its name and all its attributes."""
    return ServiceRef.of(service.name, [*service.dial_attributes, *service.bind_attributes])


def _policy_verdict(
    policy: ActivePolicy,
    name: str,
    attributes: Iterable[str],
    service: ServiceGrants,
    action: str,
    *,
    posture: PostureReport | None,
    port: int | None,
    now: datetime | None,
) -> Verdict:
    if policy.compiled is None:
        return Verdict.deny(f"policy version {policy.version} is not usable: {policy.error}")
    return policy.compiled.decide(
        Subject.of(name, attributes),
        service_ref(service),
        action,
        port,
        posture=posture,
        now=now or datetime.now(UTC),
    )
