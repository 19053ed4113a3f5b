"""Mesh settings an operator decides: router and link admin costs, no-transit routers, and
each service's terminator strategy and transit routers.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mesh_router_settings",
        sa.Column(
            "router_id",
            sa.Integer,
            sa.ForeignKey("routers.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("no_transit", sa.Boolean, nullable=False),
    )
    op.create_table(
        "mesh_link_costs",
        sa.Column(
            "router_a",
            sa.Integer,
            sa.ForeignKey("routers.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "router_b",
            sa.Integer,
            sa.ForeignKey("routers.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("cost", sa.Float, nullable=False),
        sa.CheckConstraint("router_a < router_b", name="ck_mesh_link_order"),
    )
    op.create_table(
        "service_routing",
        sa.Column(
            "service_id",
            sa.Integer,
            sa.ForeignKey("services.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("transit_only", sa.JSON, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("service_routing")
    op.drop_table("mesh_link_costs")
    op.drop_table("mesh_router_settings")
