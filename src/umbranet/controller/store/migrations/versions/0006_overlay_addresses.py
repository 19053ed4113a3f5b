"""Overlay addresses (network mode): each identity's IPv4 and IPv6, and its WireGuard endpoint.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "overlay_addresses",
        sa.Column(
            "identity_id",
            sa.Integer,
            sa.ForeignKey("identities.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("ipv4", sa.String(15), nullable=False, unique=True),
        sa.Column("ipv6", sa.String(39), nullable=False, unique=True),
        sa.Column("endpoint", sa.String(64), nullable=True),
        sa.Column("endpoint_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("overlay_addresses")
