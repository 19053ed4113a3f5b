"""ORM model of overlay addresses (network mode), owned by migration 0006.

Kept apart from `models` (same declarative base) because it belongs to one feature. One row per
identity that was ever shown its addresses: the IPv4 and IPv6 the allocator chose (unique, so
two controller replicas racing for one address cannot both store it), and the UDP endpoint
(``host:port``) the identity's WireGuard device last said it listens at.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from umbranet.controller.store.models import Base, UtcDateTime

__all__ = ["OverlayAddress", "OverlayRoute"]


class OverlayAddress(Base):
    """An identity's overlay addresses (deleted with the identity)."""

    __tablename__ = "overlay_addresses"

    identity_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("identities.id", ondelete="CASCADE"), primary_key=True
    )
    ipv4: Mapped[str] = mapped_column(sa.String(15), unique=True)
    ipv6: Mapped[str] = mapped_column(sa.String(39), unique=True)
    endpoint: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    endpoint_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)


class OverlayRoute(Base):
    """A prefix an identity advertises in network mode (subnet router, or ``0.0.0.0/0`` and
    ``::/0`` for an exit node), and whether an admin approved it (migration 0010).

    Policy ``autoApprovers`` are not stored here: they are evaluated against the policy in
    force, so changing the policy changes what is approved without touching these rows.
    """

    __tablename__ = "overlay_routes"

    identity_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("identities.id", ondelete="CASCADE"), primary_key=True
    )
    prefix: Mapped[str] = mapped_column(sa.String(43), primary_key=True)
    advertised_at: Mapped[datetime] = mapped_column(UtcDateTime)
    approved_by: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    approved_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
