"""Re-checking live grants after the epoch moved: which circuits and bindings must close.

A router sends what it carries (dialer/host identity, service, action); the controller
answers with the ones that must close, each with the reason, using the same decision as
tickets. Cost is proportional to what is live at that router, not to the size of the
network; identity and service rows are looked up once per request, however many grants
name them.

Scope: a router may only ask about grants it can actually carry, that is grants for which
the controller issued a ticket that is still valid (`Store.note_issued`). Anything else is
answered "close it" *without* evaluating policy: a circuit needs a ticket to be admitted and
should not outlive it, and a router (perhaps compromised) must not learn the policy's answer
for identities and services of its choosing. Of the two ways to scope (remember issued
grants, or have routers send ticket ids), this one needs no change to what routers keep per
circuit and survives a controller restart (the record is in the store).

Every grant found no longer allowed is written to the audit log (``access.revoked``) with
its reason, under the *router* as actor (the grant's identity goes in the detail).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from umbranet.controller.authz import decide_access
from umbranet.controller.metrics import Metrics
from umbranet.controller.service.policy import active_policy
from umbranet.controller.service.posture import report_of
from umbranet.controller.service.tickets import DenyAudit
from umbranet.controller.store import Identity, Service, Store

__all__ = ["MAX_GRANTS_PER_REQUEST", "NO_CURRENT_TICKET", "Grant", "denied"]

MAX_GRANTS_PER_REQUEST = 1024
"""The most grants one /v1/recheck may carry; routers send 256 at a time."""

NO_CURRENT_TICKET = "no ticket for this grant is current"


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
    router: str | None = None,
) -> dict[int, str]:
    """Index -> reason for every grant that is no longer allowed (or was never ticketed).

    `router` is the asking router's SPIFFE ID: the actor of the audit rows.
    """
    out: dict[int, str] = {}
    audited: list[int] = []
    policy = active_policy(store) if grants else None
    identities: dict[str, Identity | None] = {}
    services: dict[str, Service | None] = {}
    for grant in grants:
        if grant.identity not in identities:
            identities[grant.identity] = store.identity_by_spiffe_id(grant.identity)
    issued = store.issued_for({i.id for i in identities.values() if i is not None})
    for index, grant in enumerate(grants):
        if grant.service not in services:
            services[grant.service] = store.service_by_name(grant.service)
        identity, service = identities[grant.identity], services[grant.service]
        until = issued.get((identity.id, grant.service, grant.action)) if identity else None
        if identity is None or until is None or until <= now:
            out[index] = NO_CURRENT_TICKET
            if metrics is not None:
                metrics.recheck_unscoped.inc()
            continue
        audited.append(index)
        if not identity.enabled:
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
    for index in audited:
        if index in out:
            grant = grants[index]
            audit.record(
                store,
                grant.identity,
                grant.service,
                grant.action,
                out[index],
                now=now,
                kind="access.revoked",
                actor=router,
            )
    return out
