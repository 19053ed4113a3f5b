"""Session tickets and the per-identity view of services ("what may I do?").

A ticket is the controller's signed "yes" to one (identity, service, action); routers and the
hosting endpoint check it offline. The decision is made by `controller.authz`, which logs and
counts every verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from umbranet.controller.authz import decide_access
from umbranet.controller.metrics import Metrics
from umbranet.controller.service.authority import Authority
from umbranet.controller.service.errors import BadRequest, Forbidden, NotFound
from umbranet.controller.service.policy import active_policy
from umbranet.controller.service.routers import reachable_routers
from umbranet.controller.store import Identity, Router, Store
from umbranet.pki import Action
from umbranet.policy import ACTIONS

__all__ = ["Grant", "ServiceActions", "issue_ticket", "services_for"]


@dataclass(frozen=True, slots=True)
class Grant:
    """An issued ticket and the routers the holder can present it to."""

    ticket: str
    expires_at: datetime
    routers: list[Router]


@dataclass(frozen=True, slots=True)
class ServiceActions:
    name: str
    actions: list[str]


def issue_ticket(
    store: Store,
    authority: Authority,
    identity: Identity,
    *,
    service: str,
    action: str,
    now: datetime,
    metrics: Metrics | None = None,
    epoch: int = 0,
) -> Grant:
    """Decide and, if allowed, sign a ticket for `identity` to `action` the `service`.

    Raises `Forbidden` (``identity_disabled``, ``not_authorized`` with the verdict's reason),
    `NotFound` (``unknown_service``) or `BadRequest` (``invalid_action``).
    """
    if action not in ACTIONS:
        raise BadRequest("invalid_action", f"action must be one of {list(ACTIONS)}")
    if not identity.enabled:
        raise Forbidden("identity_disabled", f"identity {identity.name!r} is disabled")
    row = store.service_by_name(service)
    if row is None:
        raise NotFound("unknown_service", f"no service named {service!r}")
    verdict = decide_access(
        identity.attributes,
        row,
        action,
        subject=identity.spiffe_id,
        metrics=metrics,
        identity_name=identity.name,
        policy=active_policy(store),
        now=now,
    )
    if not verdict.allowed:
        raise Forbidden("not_authorized", verdict.reason)
    ticket, token = authority.signer.sign_ticket(
        identity.spiffe_id,
        row.name,
        Action(action),
        now,
        authority.ticket_lifetime,
        attributes=identity.attributes,
        epoch=epoch,
    )
    expires_at = datetime.fromtimestamp(ticket.expires_at, UTC)
    return Grant(ticket=token, expires_at=expires_at, routers=reachable_routers(store))


def services_for(
    store: Store, identity: Identity, *, metrics: Metrics | None = None
) -> list[ServiceActions]:
    """Every service on which `identity` may do at least one action, with those actions."""
    result: list[ServiceActions] = []
    policy = active_policy(store)
    for row in store.services():
        actions: list[str] = [
            action
            for action in ACTIONS
            if decide_access(
                identity.attributes,
                row,
                action,
                subject=identity.spiffe_id,
                purpose="listing",
                metrics=metrics,
                identity_name=identity.name,
                policy=policy,
            ).allowed
        ]
        if actions:
            result.append(ServiceActions(row.name, actions))
    return result
