"""ORM models of the controller store (SQLAlchemy 2, declarative, typed).

Only portable column types are used (String, Text, Integer, Boolean, DateTime with time zone,
JSON) so the same schema runs on SQLite and PostgreSQL. SQLite forgets time zones, so every
timestamp goes through `UtcDateTime`, which stores UTC and always returns aware datetimes.
The schema itself is owned by the Alembic migrations; these classes must match them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "AuditEvent",
    "Base",
    "ControllerState",
    "Enrollment",
    "Identity",
    "IssuedGrant",
    "PolicyVersion",
    "Router",
    "Service",
    "UtcDateTime",
]


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware datetime column that reads back aware on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base shared by every model."""


class Identity(Base):
    """A person's device, a workload, a router or an admin: one SPIFFE ID, one key pair."""

    __tablename__ = "identities"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(63), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    spiffe_id: Mapped[str] = mapped_column(sa.String(512), unique=True)
    attributes: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    noise_public_key: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    cert_serial: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    previous_cert_serial: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    cert_not_after: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    # SHA-256 of each certificate's public key: tickets are bound to these (claim "cnf").
    cert_key_fp: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    previous_cert_key_fp: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # The endpoint's newest posture report (see controller.service.posture) and its time.
    posture: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, default=None)
    posture_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)

    enrollments: Mapped[list[Enrollment]] = relationship(
        back_populates="identity", cascade="all, delete-orphan"
    )


class Enrollment(Base):
    """One enrollment token, by its `jti`; `used_at` makes it single use."""

    __tablename__ = "enrollments"

    token_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    identity_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("identities.id", ondelete="CASCADE"), index=True
    )
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    # Set when a newer token, an enrollment or a revocation superseded it unused.
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    identity: Mapped[Identity] = relationship(back_populates="enrollments")


class IssuedGrant(Base):
    """The latest ticket expiry for one (identity, service, action): what re-checks answer."""

    __tablename__ = "issued_grants"
    __table_args__ = (
        sa.UniqueConstraint("identity_id", "service", "action", name="uq_issued_grant"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    identity_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("identities.id", ondelete="CASCADE")
    )
    service: Mapped[str] = mapped_column(sa.String(63))
    action: Mapped[str] = mapped_column(sa.String(8))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ControllerState(Base):
    """A named counter that must survive restarts (``epoch``)."""

    __tablename__ = "controller_state"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[int] = mapped_column(sa.BigInteger)


class Service(Base):
    """A dark service: who may dial and bind it, where the host forwards, what is intercepted."""

    __tablename__ = "services"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(63), unique=True)
    dial_attributes: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    bind_attributes: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    host_address: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    intercepts: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Router(Base):
    """A router: its identity and the address endpoints reach it at (once it registers)."""

    __tablename__ = "routers"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(63), unique=True)
    identity_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("identities.id", ondelete="CASCADE"), unique=True
    )
    address: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)

    identity: Mapped[Identity] = relationship()


class AuditEvent(Base):
    """An administrative change: who did what to which target, when."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    actor: Mapped[str] = mapped_column(sa.String(512))
    action: Mapped[str] = mapped_column(sa.String(64))
    target: Mapped[str] = mapped_column(sa.String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    # For a refused ticket: the id the endpoint was given instead of the reason.
    decision_id: Mapped[str | None] = mapped_column(sa.String(32), default=None, index=True)
    # The hash chain (`store.audit_chain`, migration 0008).
    prev_hash: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    row_hash: Mapped[str | None] = mapped_column(sa.String(64), default=None)


class PolicyVersion(Base):
    """One accepted policy document; the highest ``version`` is the one in force."""

    __tablename__ = "policy_versions"

    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    text: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(sa.String(512))
    comment: Mapped[str | None] = mapped_column(sa.Text, default=None)
