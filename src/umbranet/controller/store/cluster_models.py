"""ORM models of what replicas share beyond the network's data (schema: migration 0006).

Kept apart from `models` (same declarative base, same `UtcDateTime`) because they serve
running several replicas on one database (docs/ha.md).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from umbranet.controller.store.models import Base, UtcDateTime

__all__ = ["ControllerSecret", "DenyThrottle"]


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
