"""ORM models of what replicas share beyond the network's data (migrations 0007, 0008).

Kept apart from `models` (same declarative base, same `UtcDateTime`) because they serve
running several replicas on one database (docs/ha.md).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from umbranet.controller.store.models import Base, UtcDateTime

__all__ = ["ControllerReplica", "ControllerSecret", "DenyThrottle"]


class ControllerSecret(Base):
    """One network secret, sealed under the key-encryption key `kek_id` names."""

    __tablename__ = "controller_secrets"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    kek_id: Mapped[str] = mapped_column(sa.String(16))
    sealed: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class DenyThrottle(Base):
    """The last audited refusal for one refusal key (a SHA-256): when, and its decision id."""

    __tablename__ = "deny_throttle"
    __table_args__ = (sa.Index("ix_deny_throttle_at", "at"),)

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    decision_id: Mapped[str] = mapped_column(sa.String(32))


class ControllerReplica(Base):
    """A running replica: the URL it advertises, refreshed while it runs (`seen_at`)."""

    __tablename__ = "controller_replicas"

    url: Mapped[str] = mapped_column(sa.String(2048), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    seen_at: Mapped[datetime] = mapped_column(UtcDateTime)
