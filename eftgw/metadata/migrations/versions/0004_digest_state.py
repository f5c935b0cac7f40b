"""The whole-file digest state of an upload in progress, saved with its offset (a takeover re-reads nothing).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("digest_state", sa.LargeBinary))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("digest_state")
