"""ORM models of the mesh's operator settings, owned by migration 0009.

Kept apart from `models` (same declarative base) because they belong to one feature. The
measured state of the mesh (links, RTTs, loads) stays soft, in memory (`service/links.py`);
only what an operator decides is stored, so it survives a controller restart and holds for
every replica: a router's admin cost and whether it may carry transit traffic, a link's
admin cost, and how a service's dials pick among its hosts.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from umbranet.controller.store.models import Base

__all__ = ["MeshLinkCost", "MeshRouterSetting", "ServiceRouting"]


class MeshRouterSetting(Base):
    """An operator's cost for paths entering a router, and its no-transit flag."""

    __tablename__ = "mesh_router_settings"

    router_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("routers.id", ondelete="CASCADE"), primary_key=True
    )
    cost: Mapped[float] = mapped_column(sa.Float, default=0.0)
    no_transit: Mapped[bool] = mapped_column(sa.Boolean, default=False)


class MeshLinkCost(Base):
    """An operator's cost for the link between two routers (either direction); the pair is
    stored with the lower router id first, so one link has one row."""

    __tablename__ = "mesh_link_costs"
    __table_args__ = (sa.CheckConstraint("router_a < router_b", name="ck_mesh_link_order"),)

    router_a: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("routers.id", ondelete="CASCADE"), primary_key=True
    )
    router_b: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("routers.id", ondelete="CASCADE"), primary_key=True
    )
    cost: Mapped[float] = mapped_column(sa.Float, default=0.0)


class ServiceRouting(Base):
    """How dials of a service choose among its hosts (`router/terminators.py` strategies)
    and which routers they may cross ("only through these routers")."""

    __tablename__ = "service_routing"

    service_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("services.id", ondelete="CASCADE"), primary_key=True
    )
    strategy: Mapped[str] = mapped_column(sa.String(16), default="smart")
    # Router names its dials may cross as middle hops; None: any router.
    transit_only: Mapped[list[str] | None] = mapped_column(sa.JSON, default=None)
