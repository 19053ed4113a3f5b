"""Re-checking live grants after the epoch moved: which circuits and bindings must close.

A router sends what it carries (dialer/host identity, service); the controller answers with
the ones policy no longer allows, each with the reason, using the same decision as tickets.
Cost is proportional to what is live at that router, not to the size of the network. Every
grant found no longer allowed is written to the audit log (``access.revoked``) with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from umbranet.controller.authz import decide_access
from umbranet.controller.metrics import Metrics
from umbranet.controller.service.policy import active_policy
from umbranet.controller.service.posture import report_of
from umbranet.controller.service.tickets import DenyAudit
from umbranet.controller.store import Store


@dataclass(frozen=True, slots=True)
class Grant:
    """One live use of a service: `identity` doing `action` on `service`."""

    identity: str  # SPIFFE ID
    service: str
    action: str


def denied(
    store: Store,
    grants: list[Grant],
    *,
    now: datetime,
    audit: DenyAudit,
    metrics: Metrics | None = None,
) -> dict[int, str]:
    """Index -> reason for every grant that is no longer allowed."""
    out: dict[int, str] = {}
    policy = active_policy(store) if grants else None
    for index, grant in enumerate(grants):
        identity = store.identity_by_spiffe_id(grant.identity)
        service = store.service_by_name(grant.service)
        if identity is None:
            out[index] = f"{grant.identity} is not an identity of this network"
        elif not identity.enabled:
            out[index] = f"identity {identity.name} is disabled"
        elif identity.cert_serial is None:
            out[index] = f"the certificates of {identity.name} were revoked"
        elif service is None:
            out[index] = f"service {grant.service} no longer exists"
        else:
            verdict = decide_access(
                identity.attributes,
                service,
                grant.action,
                subject=grant.identity,
                purpose="recheck",
                metrics=metrics,
                identity_name=identity.name,
                policy=policy,
                posture=report_of(identity),
                now=now,
            )
            if not verdict.allowed:
                out[index] = verdict.reason
    for index, reason in out.items():
        grant = grants[index]
        audit.record(
            store,
            grant.identity,
            grant.service,
            grant.action,
            reason,
            now=now,
            kind="access.revoked",
        )
    return out
