"""SFTP accounts: temporary logins bound to a case.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eftgw.metadata.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sftp_accounts",
        sa.Column("username", sa.String(64), primary_key=True),
        sa.Column("case_id", sa.String(128), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("password_sealed", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("revoked_at", UTCDateTime()),
        sa.Column("authorized_keys", sa.JSON, nullable=False),
        sa.Column("last_login_at", UTCDateTime()),
    )
    op.create_index("ix_sftp_accounts_case_id", "sftp_accounts", ["case_id"])


def downgrade() -> None:
    op.drop_table("sftp_accounts")
