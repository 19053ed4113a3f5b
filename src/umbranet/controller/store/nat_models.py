"""ORM models of NAT traversal (issue 14), owned by migration 0012.

- `RouterStun`: the STUN address a router answers binding requests on (one per router,
  deleted with its identity), listed to endpoints for address discovery.
- `NetworkCandidates`: the candidates (host and server-reflexive addresses) an identity's
  WireGuard port was last seen at, with its NAT mapping; served only to peers its filtered
  view already lets learn its key.
- `TurnSettings`: the network's TURN servers and the secret shared with them (coturn's
  ``static-auth-secret``), from which the controller mints time-limited credentials.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from umbranet.controller.store.models import Base, UtcDateTime

__all__ = ["NetworkCandidates", "RouterStun", "TurnSettings"]


class RouterStun(Base):
    __tablename__ = "router_stun"

    identity_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("identities.id", ondelete="CASCADE"), primary_key=True
    )
    address: Mapped[str] = mapped_column(sa.String(64))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class NetworkCandidates(Base):
    __tablename__ = "network_candidates"

    identity_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("identities.id", ondelete="CASCADE"), primary_key=True
    )
    candidates: Mapped[str] = mapped_column(sa.Text)  # JSON list of {kind, host, port}
    nat: Mapped[str] = mapped_column(sa.String(32))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class TurnSettings(Base):
    __tablename__ = "turn_settings"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)  # always 1: one setting
    urls: Mapped[str] = mapped_column(sa.Text)  # JSON list of turn: URLs
    realm: Mapped[str] = mapped_column(sa.String(255))
    secret: Mapped[str] = mapped_column(sa.String(255))
    ttl_seconds: Mapped[int] = mapped_column(sa.Integer)
