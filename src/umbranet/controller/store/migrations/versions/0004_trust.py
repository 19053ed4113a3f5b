"""Retired enrollment tokens and the persisted revocation epoch.

``enrollments.retired_at``: a token superseded by a newer one, an enrollment or a
revocation before it was used; it can never enroll (``token_retired``).

``issued_grants``: for each (identity, service, action) the latest expiry of a ticket issued
for it. A router's re-check is answered only for grants with a current ticket, so a router
cannot use it to ask about arbitrary identities and services.

``audit_events.decision_id``: the id an endpoint is given with a refused ticket (it learns
nothing else); an administrator looks the refusal up by it.

``identities.cert_key_fp`` / ``previous_cert_key_fp``: SHA-256 of the public keys of the
current and previous certificate, which tickets are bound to (claim ``cnf``) and which are
pushed to routers when revoked.

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
    with op.batch_alter_table("identities") as batch:
        batch.add_column(sa.Column("cert_key_fp", sa.String(64), nullable=True))
        batch.add_column(sa.Column("previous_cert_key_fp", sa.String(64), nullable=True))
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("decision_id", sa.String(32), nullable=True))
        batch.create_index("ix_audit_events_decision_id", ["decision_id"])
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "issued_grants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "identity_id",
            sa.Integer,
            sa.ForeignKey("identities.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("service", sa.String(63), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("identity_id", "service", "action", name="uq_issued_grant"),
    )
    op.create_table(
        "controller_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("identities") as batch:
        batch.drop_column("previous_cert_key_fp")
        batch.drop_column("cert_key_fp")
    op.drop_table("controller_state")
    op.drop_table("issued_grants")
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("retired_at")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_index("ix_audit_events_decision_id")
        batch.drop_column("decision_id")
