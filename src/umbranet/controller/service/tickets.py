"""Session tickets and the per-identity view of services ("what may I do?").

A ticket is the controller's signed "yes" to one (identity, service, action); routers and the
hosting endpoint check it offline. The decision is made by `controller.authz`, which logs and
counts every verdict; the API writes refusals to the audit log too (`DenyAudit`, in a
transaction of its own since the refused one rolls back), throttled per (identity, service,
action) so a client retrying in a loop cannot flood the table.

A bind grant also carries the service's HTTP rules (`policy.HttpFragment`, groups flattened):
the hosting endpoint checks each request line against them, and gets fresh ones with every
new bind ticket, that is after every epoch bump.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from umbranet.controller.authz import decide_access, service_ref
from umbranet.controller.metrics import Metrics
from umbranet.controller.service.authority import Authority
from umbranet.controller.service.certificates import certificate_keys
from umbranet.controller.service.errors import BadRequest, Forbidden, NotFound
from umbranet.controller.service.policy import active_policy
from umbranet.controller.service.posture import report_of
from umbranet.controller.service.routers import reachable_routers
from umbranet.controller.store import Identity, Router, Store
from umbranet.controller.store.cluster_models import DenyThrottle
from umbranet.pki import Action
from umbranet.policy import ACTIONS

__all__ = ["DenyAudit", "Grant", "ServiceActions", "issue_ticket", "services_for"]


class DenyAudit:
    """Writes refusals to the audit log: at most one row per `interval` seconds for the same
    refusal (one instance per controller), so a client retrying in a loop cannot flood it.

    Each row gets a decision id, which is all a refused endpoint is told; the same refusal
    (same reason too) inside the interval is given the id of the row already written for it.

    With `shared` (replicas on one database) the throttle lives in the ``deny_throttle``
    table, in the refusal's audit transaction: a client retrying against every replica still
    writes one row per interval, and the row lock makes concurrent refusals agree on one id.
    """

    def __init__(
        self, interval: float = 10.0, memory: int = 10_000, *, shared: bool = False
    ) -> None:
        self.interval = interval
        self.shared = shared
        self._memory = memory
        self._last: dict[tuple[str, ...], tuple[float, str]] = {}
        self._lock = threading.Lock()

    def record(
        self,
        store: Store,
        subject: str,
        service: str,
        action: str,
        reason: str,
        *,
        now: datetime,
        kind: str = "access.deny",
        actor: str | None = None,
    ) -> str:
        """Audit ``subject`` refused ``action`` on ``service`` (``kind``: deny or revoked);
        returns the decision id.

        The row's actor is whoever caused it: the subject asking for a ticket, or the router
        (`actor`) whose re-check found a live grant no longer allowed; the subject is then
        in the detail. A router must never write rows in someone else's name.
        """
        key = (kind, subject, service, action, reason)
        if self.shared:
            decision_id, fresh = self._admit_shared(store, key, now)
        else:
            decision_id, fresh = self._admit(key, now)
        if fresh:
            detail = {"action": action, "reason": reason}
            if actor is not None and actor != subject:
                detail["identity"] = subject
            store.audit(now, actor or subject, kind, service, detail, decision_id=decision_id)
        return decision_id

    def _admit_shared(self, store: Store, key: tuple[str, ...], now: datetime) -> tuple[str, bool]:
        session = store.session
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()
        for _ in range(3):  # a concurrent first refusal may insert the row under us
            row = session.get(DenyThrottle, digest, with_for_update=True, populate_existing=True)
            if row is not None and 0 <= (now - row.at).total_seconds() < self.interval:
                return row.decision_id, False
            decision_id = secrets.token_hex(8)
            if row is not None:
                row.at, row.decision_id = now, decision_id
                return decision_id, True
            try:
                with session.begin_nested():
                    session.add(DenyThrottle(key=digest, at=now, decision_id=decision_id))
            except sa.exc.IntegrityError:
                continue
            # Forget refusals older than the interval now and then (one row per new key).
            cutoff = now - timedelta(seconds=self.interval)
            session.execute(sa.delete(DenyThrottle).where(DenyThrottle.at < cutoff))
            return decision_id, True
        return secrets.token_hex(8), True

    def _admit(self, key: tuple[str, ...], now: datetime) -> tuple[str, bool]:
        stamp = now.timestamp()
        with self._lock:
            last = self._last.get(key)
            if last is not None and 0 <= stamp - last[0] < self.interval:
                return last[1], False
            if len(self._last) >= self._memory:
                self._last.clear()
            decision_id = secrets.token_hex(8)
            self._last[key] = (stamp, decision_id)
            return decision_id, True


@dataclass(frozen=True, slots=True)
class Grant:
    """An issued ticket and the routers the holder can present it to."""

    ticket: str
    expires_at: datetime
    routers: list[Router]
    http_rules: dict[str, Any] | None = None


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
    port: int | None = None,
    metrics: Metrics | None = None,
    epoch: int = 0,
) -> Grant:
    """Decide and, if allowed, sign a ticket for `identity` to `action` the `service`.

    With a `port` (dial only), the policy decides for that port and the ticket names it.
    Raises `Forbidden` (``identity_disabled``, ``not_authorized`` with the verdict's reason),
    `NotFound` (``unknown_service``) or `BadRequest` (``invalid_action``, ``invalid_port``).
    """
    if action not in ACTIONS:
        raise BadRequest("invalid_action", f"action must be one of {list(ACTIONS)}")
    if port is not None and action != "dial":
        raise BadRequest("invalid_port", "only a dial names a port")
    if not identity.enabled:
        raise Forbidden("identity_disabled", f"identity {identity.name!r} is disabled")
    row = store.service_by_name(service)
    if row is None:
        raise NotFound("unknown_service", f"no service named {service!r}")
    policy = active_policy(store)
    verdict = decide_access(
        identity.attributes,
        row,
        action,
        subject=identity.spiffe_id,
        metrics=metrics,
        identity_name=identity.name,
        policy=policy,
        posture=report_of(identity),
        port=port,
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
        # A bind ticket is shown to every dialer in the handshake: it proves the right to
        # host, and the host's attributes are nobody's business there (nothing reads them).
        attributes=identity.attributes if action == "dial" else (),
        epoch=epoch,
        port=port,
        key_binding=certificate_keys(identity),
    )
    expires_at = datetime.fromtimestamp(ticket.expires_at, UTC)
    store.note_issued(identity.id, row.name, action, expires_at)
    http_rules = None
    if action == "bind" and policy is not None and policy.compiled is not None:
        http_rules = policy.compiled.http_fragment(service_ref(row)).to_json()
    return Grant(token, expires_at, reachable_routers(store), http_rules)


def services_for(
    store: Store, identity: Identity, *, metrics: Metrics | None = None
) -> list[ServiceActions]:
    """Every service on which `identity` may do at least one action, with those actions."""
    result: list[ServiceActions] = []
    policy = active_policy(store)
    posture = report_of(identity)
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
                posture=posture,
            ).allowed
        ]
        if actions:
            result.append(ServiceActions(row.name, actions))
    return result
