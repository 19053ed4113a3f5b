"""Replicas clients can fail over to, and the audit log's hash chain.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

``controller_replicas``: every running replica records the URL it advertises and refreshes
``seen_at``; clients are told the replicas seen recently (docs/ha.md, client failover).
``audit_events`` gains ``prev_hash`` and ``row_hash`` (`store.audit_chain`); the rows already
there are chained here, oldest first, and ``controller_state`` gets the ``audit_head`` row that
appends lock and advance.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from umbranet.controller.store.audit_chain import GENESIS, HEAD, row_hash
from umbranet.controller.store.models import UtcDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "controller_replicas",
        sa.Column("url", sa.String(2048), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("row_hash", sa.String(64), nullable=True))
    _chain_existing_rows()


def _chain_existing_rows() -> None:
    # The columns as of this revision (not the ORM model, which later revisions may grow).
    table = sa.table(
        "audit_events",
        sa.column("id", sa.Integer),
        sa.column("at", UtcDateTime()),
        sa.column("actor", sa.String),
        sa.column("action", sa.String),
        sa.column("target", sa.String),
        sa.column("detail", sa.JSON),
        sa.column("decision_id", sa.String),
        sa.column("prev_hash", sa.String),
        sa.column("row_hash", sa.String),
    )
    state = sa.table(
        "controller_state", sa.column("name", sa.String), sa.column("value", sa.Integer)
    )
    if op.get_context().as_sql:
        # Offline (SQL script) mode cannot read rows: an empty chain's head only. Rows
        # already there stay unchained, and `umbra audit verify` reports the first of them.
        op.execute(sa.insert(state).values(name=HEAD, value=0))
        return
    bind = op.get_bind()
    prev, head = GENESIS, 0
    while True:  # in pages: an audit table can be large
        page = (
            bind.execute(sa.select(table).where(table.c.id > head).order_by(table.c.id).limit(1000))
            .mappings()
            .all()
        )
        if not page:
            break
        for row in page:
            digest = row_hash(
                prev, row["id"], at=row["at"], actor=row["actor"], action=row["action"],
                target=row["target"], detail=row["detail"], decision_id=row["decision_id"],
            )  # fmt: skip
            bind.execute(
                sa.update(table)
                .where(table.c.id == row["id"])
                .values(prev_hash=prev, row_hash=digest)
            )
            prev, head = digest, row["id"]
    bind.execute(sa.insert(state).values(name=HEAD, value=head))


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM controller_state WHERE name = 'audit_head'"))
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("row_hash")
        batch.drop_column("prev_hash")
    op.drop_table("controller_replicas")
