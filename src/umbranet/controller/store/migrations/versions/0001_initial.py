"""Initial schema: identities, enrollments, services, routers, audit events.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("spiffe_id", sa.String(512), nullable=False, unique=True),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("noise_public_key", sa.String(64), nullable=True),
        sa.Column("cert_serial", sa.String(64), nullable=True),
        sa.Column("previous_cert_serial", sa.String(64), nullable=True),
        _ts("cert_not_after", nullable=True),
        _ts("created_at", nullable=False),
    )
    op.create_table(
        "enrollments",
        sa.Column("token_id", sa.String(64), primary_key=True),
        sa.Column(
            "identity_id",
            sa.Integer,
            sa.ForeignKey("identities.id", ondelete="CASCADE"),
            nullable=False,
        ),
        _ts("expires_at", nullable=False),
        _ts("used_at", nullable=True),
        _ts("created_at", nullable=False),
    )
    op.create_index("ix_enrollments_identity_id", "enrollments", ["identity_id"])
    op.create_table(
        "services",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("dial_attributes", sa.JSON, nullable=False),
        sa.Column("bind_attributes", sa.JSON, nullable=False),
        sa.Column("host_address", sa.String(255), nullable=True),
        sa.Column("intercepts", sa.JSON, nullable=False),
        _ts("created_at", nullable=False),
    )
    op.create_table(
        "routers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column(
            "identity_id",
            sa.Integer,
            sa.ForeignKey("identities.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column("address", sa.String(255), nullable=True),
        _ts("last_seen", nullable=True),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True),
        _ts("at", nullable=False),
        sa.Column("actor", sa.String(512), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("routers")
    op.drop_table("services")
    op.drop_index("ix_enrollments_identity_id", table_name="enrollments")
    op.drop_table("enrollments")
    op.drop_table("identities")
