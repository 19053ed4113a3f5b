"""The one place the controller decides access; every verdict is logged and counted.

The decision itself is `umbranet.policy.decide_access` (pure); this wrapper adds the side
effects the house rules require, so swapping in the HuJSON policy engine touches one import.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from umbranet.controller.metrics import Metrics
from umbranet.policy import ServiceGrants, Verdict
from umbranet.policy import decide_access as _policy_decide

__all__ = ["METRICS", "decide_access"]

log = logging.getLogger("umbranet.controller.authz")

METRICS = Metrics()
"""Counters used when the caller passes none (the app passes its own)."""


def decide_access(
    identity_attributes: Iterable[str],
    service: ServiceGrants,
    action: str,
    *,
    subject: str = "-",
    purpose: str = "ticket",
    metrics: Metrics | None = None,
) -> Verdict:
    """Decide whether `subject` (holding `identity_attributes`) may `action` the `service`.

    `purpose` says why it was asked (``ticket`` for a grant, ``listing`` for ``/v1/me``) so
    the counters can tell real grants from previews.
    """
    verdict = _policy_decide(identity_attributes, service, action)
    outcome = "allow" if verdict.allowed else "deny"
    (metrics or METRICS).inc(
        "umbra_access_verdicts_total", action=action, outcome=outcome, purpose=purpose
    )
    level = logging.INFO if purpose == "ticket" else logging.DEBUG
    log.log(
        level,
        "access verdict=%s subject=%s service=%s action=%s purpose=%s reason=%s",
        outcome,
        subject,
        service.name,
        action,
        purpose,
        verdict.reason,
    )
    return verdict
