"""NAT traversal: routers' STUN addresses, endpoints' candidates, TURN settings.

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _owner() -> sa.Column[int]:
    return sa.Column(
        "identity_id",
        sa.Integer,
        sa.ForeignKey("identities.id", ondelete="CASCADE"),
        primary_key=True,
    )


def upgrade() -> None:
    op.create_table(
        "router_stun",
        _owner(),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "network_candidates",
        _owner(),
        sa.Column("candidates", sa.Text, nullable=False),
        sa.Column("nat", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "turn_settings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("urls", sa.Text, nullable=False),
        sa.Column("realm", sa.String(255), nullable=False),
        sa.Column("secret", sa.String(255), nullable=False),
        sa.Column("ttl_seconds", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("turn_settings")
    op.drop_table("network_candidates")
    op.drop_table("router_stun")
