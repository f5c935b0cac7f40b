"""Table definitions used by the repository's queries.

The schema itself is created and changed only by the Alembic migrations in ``migrations/versions``; these
definitions describe the newest version and must be kept in step with them: Alembic's own comparison (what
``alembic check`` runs) must find no difference in tables, columns, types, indexes or constraints between a
migrated database and these definitions, on SQLite and PostgreSQL (``tests/metadata/test_repository.py``).

Tables: ``cases`` (state and closure time), ``files`` (completed files, keyed by an opaque id, with the object
key and digests), ``uploads`` (in-progress uploads: offset, length, expiry, staging key, and the state of the
whole-file digests at that offset), ``sessions`` (browser sessions; only a hash of the cookie value is kept),
``launch_tokens`` (used ``jti`` values, for single use), ``audit_events`` (append-only), ``sftp_accounts``
(temporary SFTP logins of a case: argon2id hash and sealed copy of the password, expiry, revocation,
authorized public keys), ``leases`` (who holds an upload's lock or leads a once-per-region job, until when,
and the fencing token that grows with every new holder), ``events`` (the outbox of integration events,
:mod:`eftgw.metadata.events`: ``seq`` grows in commit order, and each event's delivery state is beside it).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """An aware UTC datetime on every backend (SQLite keeps naive text; PostgreSQL uses timestamptz)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


metadata = sa.MetaData()

cases = sa.Table(
    "cases",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("opened_at", UTCDateTime(), nullable=False),
    sa.Column("closed_at", UTCDateTime()),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("case_id", sa.String(128), nullable=False, index=True),
    sa.Column("name", sa.String(512), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("xxh128", sa.String(32), nullable=False),
    sa.Column("object_key", sa.String(512), nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("uploaded_at", UTCDateTime(), nullable=False),
    sa.Column("uploaded_by", sa.String(255), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("via", sa.String(16), nullable=False),
    sa.Column("modified_at", UTCDateTime()),
    sa.Index("ix_files_case_name", "case_id", "name"),
    sa.Index("ix_files_case_uploaded", "case_id", "uploaded_at", "id"),
)

uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("case_id", sa.String(128), nullable=False, index=True),
    sa.Column("file_id", sa.String(64), nullable=False),
    sa.Column("name", sa.String(512), nullable=False),
    sa.Column("length", sa.BigInteger),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("created_by", sa.String(255), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("via", sa.String(16), nullable=False),
    sa.Column("staging_key", sa.String(512), nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("concat", sa.String(16), nullable=False),
    sa.Column("partials", sa.JSON, nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    # The whole-file SHA-256/xxh128 state at `offset` (eftgw.hashing.FileDigests.export), saved with it.
    sa.Column("digest_state", sa.LargeBinary),
    sa.Index("ix_uploads_case_name", "case_id", "name"),
    sa.Index("ix_uploads_case_state_created", "case_id", "state", "created_at", "id"),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("user", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("case_id", sa.String(128), index=True),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)

launch_tokens = sa.Table(
    "launch_tokens",
    metadata,
    sa.Column("jti", sa.String(128), primary_key=True),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime(), nullable=False, index=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("case_id", sa.String(128), index=True),
    sa.Column("target", sa.String(255)),
    sa.Column("remote", sa.String(255)),
    sa.Column("via", sa.String(16)),
    sa.Column("detail", sa.JSON, nullable=False),
)

sftp_accounts = sa.Table(
    "sftp_accounts",
    metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("case_id", sa.String(128), nullable=False, index=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("password_sealed", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", sa.String(255), nullable=False),
    sa.Column("revoked_at", UTCDateTime()),
    sa.Column("authorized_keys", sa.JSON, nullable=False),
    sa.Column("last_login_at", UTCDateTime()),
    # When the account's expiry was reported (its ``sftp_account.expired`` event stored): exactly once.
    sa.Column("expiry_reported_at", UTCDateTime()),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),  # upload:<upload-id> | job:<job-name>
    sa.Column("holder", sa.String(64), index=True),  # the holding node's instance id; NULL when released
    sa.Column("fence", sa.BigInteger, nullable=False),  # +1 for every new holder; writes carry it
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("interrupt", sa.Boolean, nullable=False),  # a newer request asks the holder to let go
)

# Pending = neither delivered nor dead: the partial indexes below hold only those rows, so the delivery
# queries stay small however many delivered events the outbox keeps until they are pruned.
PENDING_EVENT = "delivered_at IS NULL AND dead_at IS NULL"

events = sa.Table(
    "events",
    metadata,
    # SQLite's AUTOINCREMENT: a seq is never used twice, even after the newest events were pruned.
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
    sa.Index("ix_events_case_seq", "case_id", "seq"),
    sa.Index(
        "ix_events_pending_case",
        "case_id",
        "seq",
        sqlite_where=sa.text(PENDING_EVENT),
        postgresql_where=sa.text(PENDING_EVENT),
    ),
    sa.Index(
        "ix_events_pending_seq",
        "seq",
        sqlite_where=sa.text(PENDING_EVENT),
        postgresql_where=sa.text(PENDING_EVENT),
    ),
    sa.Index("ix_events_at", "at"),
    sqlite_autoincrement=True,
)
