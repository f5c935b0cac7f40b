"""Leases: cross-node upload locks with fencing tokens, and leaders of once-per-region jobs.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eftgw.metadata.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(64)),
        sa.Column("fence", sa.BigInteger, nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("interrupt", sa.Boolean, nullable=False),
    )
    op.create_index("ix_leases_holder", "leases", ["holder"])


def downgrade() -> None:
    op.drop_table("leases")
