"""Repositories: the queries the use cases need, over one SQLAlchemy session.

The service layer never writes SQL; it asks a `Store` (one per transaction) for rows and
hands new rows back. Integrity races (two admins creating the same name at once) surface as
`Conflict` from `flush`, so callers get a clear error instead of a driver exception.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from umbranet.controller.logfmt import safe
from umbranet.controller.store.audit_chain import (
    GENESIS,
    HEAD,
    ChainRow,
    ChainVerdict,
    row_hash,
    verify,
)
from umbranet.controller.store.models import (
    AuditEvent,
    ControllerState,
    Enrollment,
    Identity,
    IssuedGrant,
    PolicyVersion,
    Router,
    Service,
)

__all__ = ["Conflict", "Store"]

log = logging.getLogger("umbranet.controller.audit")


class Conflict(Exception):
    """A write broke a uniqueness rule (a name or SPIFFE ID already taken)."""


class Store:
    """Typed queries over one session; the session's transaction is owned by the caller."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # identities

    def identity_by_name(self, name: str) -> Identity | None:
        return self.session.scalar(sa.select(Identity).where(Identity.name == name))

    def identities_by_names(self, names: Collection[str]) -> list[Identity]:
        """The identities named (unknown names skipped), in chunks that stay under every
        backend's limit on bound parameters."""
        wanted, found = sorted(names), list[Identity]()
        for first in range(0, len(wanted), 500):
            chunk = wanted[first : first + 500]
            found.extend(self.session.scalars(sa.select(Identity).where(Identity.name.in_(chunk))))
        return found

    def identity_by_spiffe_id(self, spiffe_id: str) -> Identity | None:
        return self.session.scalar(sa.select(Identity).where(Identity.spiffe_id == spiffe_id))

    def identity_by_noise_key(self, noise_public_key: str) -> Identity | None:
        """The identity that registered this Noise key (base64), if any."""
        return self.session.scalar(
            sa.select(Identity).where(Identity.noise_public_key == noise_public_key).limit(1)
        )

    def identities(self) -> Sequence[Identity]:
        return self.session.scalars(sa.select(Identity).order_by(Identity.name)).all()

    def add(
        self,
        row: Identity | Enrollment | Service | Router | AuditEvent | PolicyVersion | IssuedGrant,
    ) -> None:
        """Add a row and flush now, so a uniqueness clash is reported here as `Conflict`."""
        try:
            with self.session.begin_nested():
                self.session.add(row)
                self.session.flush()
        except IntegrityError as exc:
            raise Conflict(str(exc.orig)) from exc

    # enrollments

    def enrollment(self, token_id: str) -> Enrollment | None:
        return self.session.get(Enrollment, token_id)

    def consume_enrollment(self, token_id: str, now: datetime) -> bool:
        """Mark a token used; False if it was already used.

        A conditional UPDATE, so two concurrent enrollments with one token cannot both win.
        """
        result = self.session.execute(
            sa.update(Enrollment)
            .where(Enrollment.token_id == token_id, Enrollment.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        rowcount: int = getattr(result, "rowcount", 0)
        return rowcount == 1

    def retire_enrollments(
        self, identity_id: int, now: datetime, *, keep: str | None = None
    ) -> int:
        """Retire every unused, unretired token of the identity except `keep`; how many.

        A token handed out earlier (and perhaps leaked) must not enroll after the identity got
        a newer one, enrolled, or had its certificates revoked.
        """
        query = sa.update(Enrollment).where(
            Enrollment.identity_id == identity_id,
            Enrollment.used_at.is_(None),
            Enrollment.retired_at.is_(None),
        )
        if keep is not None:
            query = query.where(Enrollment.token_id != keep)
        result = self.session.execute(
            query.values(retired_at=now).execution_options(synchronize_session=False)
        )
        rowcount: int = getattr(result, "rowcount", 0)
        return rowcount

    # issued grants (what router re-checks may ask about)

    def note_issued(
        self, identity_id: int, service: str, action: str, expires_at: datetime
    ) -> None:
        """Remember that a ticket for this grant is valid until `expires_at` (latest wins)."""
        row = self._issued(identity_id, service, action)
        if row is None:
            try:
                self.add(
                    IssuedGrant(
                        identity_id=identity_id,
                        service=service,
                        action=action,
                        expires_at=expires_at,
                    )
                )
                return
            except Conflict:  # another replica inserted it first: update theirs
                row = self._issued(identity_id, service, action)
                if row is None:
                    raise
        row.expires_at = max(row.expires_at, expires_at)

    def issued_for(self, identity_ids: Collection[int]) -> dict[tuple[int, str, str], datetime]:
        """(identity id, service, action) -> latest ticket expiry, for these identities."""
        if not identity_ids:
            return {}
        rows = self.session.scalars(
            sa.select(IssuedGrant).where(IssuedGrant.identity_id.in_(sorted(identity_ids)))
        )
        return {(r.identity_id, r.service, r.action): r.expires_at for r in rows}

    def _issued(self, identity_id: int, service: str, action: str) -> IssuedGrant | None:
        return self.session.scalar(
            sa.select(IssuedGrant).where(
                IssuedGrant.identity_id == identity_id,
                IssuedGrant.service == service,
                IssuedGrant.action == action,
            )
        )

    # services

    def service_by_name(self, name: str) -> Service | None:
        return self.session.scalar(sa.select(Service).where(Service.name == name))

    def services_named(self, names: Sequence[str]) -> dict[str, Service]:
        """The services of `names` that exist, by name: one query per 500 names (a view of
        hundreds of services must not cost a query each)."""
        found: dict[str, Service] = {}
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            rows = self.session.scalars(sa.select(Service).where(Service.name.in_(chunk)))
            found.update((row.name, row) for row in rows)
        return found

    def inventory_fingerprint(self) -> tuple[int, ...]:
        """Changes whenever an identity or service is added, removed, enabled or disabled."""
        idents = self.session.execute(
            sa.select(
                sa.func.count(Identity.id),
                sa.func.coalesce(sa.func.max(Identity.id), 0),
                sa.func.count(Identity.id).filter(Identity.enabled.is_(True)),
            )
        ).one()
        services = self.session.execute(
            sa.select(sa.func.count(Service.id), sa.func.coalesce(sa.func.max(Service.id), 0))
        ).one()
        return (*(int(v) for v in idents), *(int(v) for v in services))

    def services(self) -> Sequence[Service]:
        return self.session.scalars(sa.select(Service).order_by(Service.name)).all()

    def delete(self, row: Service | Router | Identity) -> None:
        self.session.delete(row)
        self.session.flush()

    # routers

    def router_by_name(self, name: str) -> Router | None:
        return self.session.scalar(sa.select(Router).where(Router.name == name))

    def router_by_identity(self, identity_id: int) -> Router | None:
        return self.session.scalar(sa.select(Router).where(Router.identity_id == identity_id))

    def routers(self) -> Sequence[Router]:
        return self.session.scalars(sa.select(Router).order_by(Router.name)).all()

    # audit

    def audit(
        self,
        now: datetime,
        actor: str,
        action: str,
        target: str,
        detail: dict[str, Any],
        *,
        decision_id: str | None = None,
    ) -> None:
        """Record an administrative change (in the caller's transaction) and log it.

        The row joins the audit hash chain (`store.audit_chain`). Appends are serialised by
        the lock on the ``audit_head`` row (``SELECT ... FOR UPDATE`` on PostgreSQL, held to
        commit, so replicas appending at once never fork the chain; SQLite's write lock does
        the same). Take it late in a transaction: it queues every other audited change.
        """
        head_row = sa.select(ControllerState).where(ControllerState.name == HEAD)
        head = self.session.scalar(head_row.with_for_update())
        prev = GENESIS
        if head is None:
            head = ControllerState(name=HEAD, value=0)
            self.session.add(head)
        elif head.value:
            found = self.session.scalar(
                sa.select(AuditEvent.row_hash).where(AuditEvent.id == head.value)
            )
            # A missing head row is `umbra audit verify`'s to report; appends go on.
            prev = found or GENESIS
        event = AuditEvent(
            at=now,
            actor=actor,
            action=action,
            target=target,
            detail=detail,
            decision_id=decision_id,
            prev_hash=prev,
        )
        self.session.add(event)
        self.session.flush()  # the id is part of the hash
        event.row_hash = row_hash(
            prev, event.id, at=now, actor=actor, action=action, target=target,
            detail=detail, decision_id=decision_id,
        )  # fmt: skip
        head.value = event.id
        # Actors and targets may come from peers (a service name asked for): one line each.
        log.info(
            "audit action=%s actor=%s target=%s",
            safe(action),
            safe(actor),
            safe(target),
        )

    def verify_audit_chain(self) -> ChainVerdict:
        """Check the whole audit hash chain, oldest row first (streamed, not all in memory)."""
        head = self.session.scalar(
            sa.select(ControllerState.value).where(ControllerState.name == HEAD)
        )
        columns = (
            AuditEvent.id, AuditEvent.at, AuditEvent.actor, AuditEvent.action,
            AuditEvent.target, AuditEvent.detail, AuditEvent.decision_id,
            AuditEvent.prev_hash, AuditEvent.row_hash,
        )  # fmt: skip
        rows = self.session.execute(
            sa.select(*columns).order_by(AuditEvent.id).execution_options(yield_per=1000)
        )
        return verify((ChainRow(*row) for row in rows), int(head or 0))

    def decision(self, decision_id: str) -> AuditEvent | None:
        """The refusal recorded under `decision_id`, if any."""
        return self.session.scalar(
            sa.select(AuditEvent)
            .where(AuditEvent.decision_id == decision_id)
            .order_by(AuditEvent.id.desc())
            .limit(1)
        )

    def audit_events(self, limit: int = 100, action: str | None = None) -> Sequence[AuditEvent]:
        """Newest first; ``action`` keeps one kind (``access.deny``) or a family (``access.``)."""
        query = sa.select(AuditEvent)
        if action:
            if action.endswith("."):
                query = query.where(AuditEvent.action.startswith(action, autoescape=True))
            else:
                query = query.where(AuditEvent.action == action)
        query = query.order_by(AuditEvent.id.desc()).limit(limit)
        return self.session.scalars(query).all()

    # policy versions

    def policy_current(self) -> PolicyVersion | None:
        """The policy in force: the newest accepted version (None before the first)."""
        query = sa.select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(1)
        return self.session.scalar(query)

    def policy_version(self, version: int) -> PolicyVersion | None:
        return self.session.get(PolicyVersion, version)

    def policy_history(self, limit: int = 100) -> Sequence[PolicyVersion]:
        """Newest first."""
        query = sa.select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(limit)
        return self.session.scalars(query).all()
