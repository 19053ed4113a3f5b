"""ORM models of join keys: one key enrolls many replicas, each as an identity of its own.

Kept apart from `models` (same declarative base, same `UtcDateTime`) because they belong to one
feature; the schema is owned by migration 0005.

A key stores only the SHA-256 of its secret. `JoinKeyMember` ties each identity a key created to
that key, with the ephemeral lifetime it was given and when it was last seen online, so the
controller can remove an ephemeral identity that stayed offline too long.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from umbranet.controller.store.models import Base, UtcDateTime

__all__ = ["JoinKey", "JoinKeyMember"]


class JoinKey(Base):
    """A join key: reusable or single use, optionally ephemeral, with attributes and expiry."""

    __tablename__ = "join_keys"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(sa.String(64))
    attributes: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    reusable: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    # Seconds offline after which an identity made with this key is removed; None: kept.
    ephemeral_seconds: Mapped[int | None] = mapped_column(sa.Integer, default=None)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(sa.String(512))
    uses: Mapped[int] = mapped_column(sa.Integer, default=0)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)


class JoinKeyMember(Base):
    """An identity created with a join key (deleted with the identity)."""

    __tablename__ = "join_key_members"

    identity_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("identities.id", ondelete="CASCADE"), primary_key=True
    )
    join_key_id: Mapped[str] = mapped_column(sa.String(32), index=True)
    ephemeral_seconds: Mapped[int | None] = mapped_column(sa.Integer, default=None)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime)
