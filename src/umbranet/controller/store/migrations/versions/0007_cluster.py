"""What several replicas on one database share: sealed network secrets, the deny throttle.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

``controller_secrets`` holds the CA key and certificate, the ticket-signing key and the JWT
key, each sealed (AES-256-GCM) under a key-encryption key that never enters the database
(`controller.secrets`). ``deny_throttle`` remembers the last audited refusal per refusal key,
so a client retrying against several replicas still writes one audit row per interval.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "controller_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("kek_id", sa.String(16), nullable=False),
        sa.Column("sealed", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "deny_throttle",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decision_id", sa.String(32), nullable=False),
    )
    op.create_index("ix_deny_throttle_at", "deny_throttle", ["at"])


def downgrade() -> None:
    op.drop_index("ix_deny_throttle_at", table_name="deny_throttle")
    op.drop_table("deny_throttle")
    op.drop_table("controller_secrets")
