"""Indexes for lookups by name (SFTP stat/open), keyset pages of files and uploads, and active-upload counts.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_files_case_name", "files", ["case_id", "name"])
    op.create_index("ix_files_case_uploaded", "files", ["case_id", "uploaded_at", "id"])
    op.create_index("ix_uploads_case_name", "uploads", ["case_id", "name"])
    op.create_index("ix_uploads_case_state_created", "uploads", ["case_id", "state", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_uploads_case_state_created", "uploads")
    op.drop_index("ix_uploads_case_name", "uploads")
    op.drop_index("ix_files_case_uploaded", "files")
    op.drop_index("ix_files_case_name", "files")
