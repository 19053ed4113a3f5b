"""Retired enrollment tokens and the persisted revocation epoch.

``enrollments.retired_at``: a token superseded by a newer one, an enrollment or a
revocation before it was used; it can never enroll (``token_retired``).

``controller_state``: small named counters that must survive a restart; the first is
``epoch``, which must never go backwards even when the clock does.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "controller_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("controller_state")
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("retired_at")
