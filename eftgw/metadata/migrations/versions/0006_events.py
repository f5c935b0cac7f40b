"""The outbox of integration events, and the mark that an SFTP account's expiry was reported.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eftgw.metadata.schema import PENDING_EVENT, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("case_id", sa.String(128)),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime()),
        sa.Column("dead_at", UTCDateTime()),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_case_seq", "events", ["case_id", "seq"])
    pending = sa.text(PENDING_EVENT)
    op.create_index(
        "ix_events_pending_case", "events", ["case_id", "seq"], sqlite_where=pending, postgresql_where=pending
    )
    op.create_index(
        "ix_events_pending_seq", "events", ["seq"], sqlite_where=pending, postgresql_where=pending
    )
    op.create_index("ix_events_at", "events", ["at"])
    with op.batch_alter_table("sftp_accounts") as batch:
        batch.add_column(sa.Column("expiry_reported_at", UTCDateTime()))


def downgrade() -> None:
    with op.batch_alter_table("sftp_accounts") as batch:
        batch.drop_column("expiry_reported_at")
    op.drop_index("ix_events_at", "events")
    op.drop_index("ix_events_pending_seq", "events")
    op.drop_index("ix_events_pending_case", "events")
    op.drop_index("ix_events_case_seq", "events")
    op.drop_table("events")
