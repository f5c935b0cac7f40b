"""The metadata repository: every read and write of cases, files, uploads, sessions and audit events.

Each method is one transaction. Methods that must change several rows together (finishing an upload into a
file) do so in one method, so a crash leaves either the old or the new state.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import functools
import os
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from eftgw.errors import UploadLocked
from eftgw.events import Event
from eftgw.metadata import rows
from eftgw.metadata import schema as t
from eftgw.metadata.engine import begin_write, make_engine
from eftgw.metadata.events import EventStore, append_events, scrub_purged_events
from eftgw.model import (
    AuditEvent,
    Case,
    CaseState,
    ConcatKind,
    FileRecord,
    Session,
    SftpAccount,
    Upload,
    UploadState,
)
from eftgw.pagination import Position

# Ids per ``IN (...)`` list: well under SQLite's and PostgreSQL's bound-parameter limits.
_IN_CHUNK = 500

MIGRATIONS = Path(__file__).with_name("migrations")
# `revision = "0005"`, also as Alembic's template writes it: `down_revision: str | None = '0004'`.
_REVISION = re.compile(r"""^revision\s*(?::[^=\n]*)?=\s*['"]([^'"]+)['"]""", re.MULTILINE)
_DOWN_REVISION = re.compile(r"""^down_revision\s*(?::[^=\n]*)?=\s*['"]([^'"]+)['"]""", re.MULTILINE)


@functools.cache
def _migration_heads() -> frozenset[str]:
    """The newest revisions of ``migrations/versions`` (the ones no other revision follows), read from the
    scripts' text: deciding that nothing is due must not cost loading Alembic (every admin command migrates
    first)."""
    revisions: set[str] = set()
    followed: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("[!_]*.py"):
        text = script.read_text(encoding="utf-8")
        found = _REVISION.search(text)
        if found is None:
            return frozenset()  # a script this reader does not understand: let Alembic decide
        revisions.add(found.group(1))
        if down := _DOWN_REVISION.search(text):
            followed.add(down.group(1))
    return frozenset(revisions - followed)


def _schema_is_current(conn: Connection) -> bool:
    """The database is at the newest migration already (a fresh one has no ``alembic_version`` yet)."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return False
    current = {row[0] for row in conn.execute(sa.text("SELECT version_num FROM alembic_version"))}
    heads = _migration_heads()
    return bool(heads) and current == heads


@contextlib.asynccontextmanager
async def _file_lock(path: str) -> AsyncIterator[None]:
    """An exclusive lock between processes on one machine (``flock`` on ``path``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _insert_audit(event: AuditEvent) -> sa.Insert:
    """The INSERT of an audit event (the id is the database's)."""
    return sa.insert(t.audit_events).values(**rows.values(t.audit_events, event, exclude=("id",)))


class SqlRepository(EventStore):
    """Every port of :mod:`eftgw.ports` (:class:`~eftgw.ports.MetadataRepository`) over SQLAlchemy Core with
    an async driver (aiosqlite or asyncpg)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""

        def upgrade(conn: Connection) -> None:
            from alembic import command  # loaded only when a migration is due
            from alembic.config import Config as AlembicConfig

            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        async with self.engine.connect() as conn:
            if await conn.run_sync(_schema_is_current):
                return
        database = self.engine.url.database
        if self.dialect == "sqlite" and database and database != ":memory:":
            # `serve` and an admin command may start at once: one migrates, the other waits for it.
            async with _file_lock(database + ".migrate.lock"), begin_write(self.engine) as conn:
                await conn.run_sync(upgrade)
            return
        async with begin_write(self.engine) as conn:
            if self.dialect == "postgresql":
                # Several nodes may start at once: one migrates, the others wait for it.
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242001)"))
            await conn.run_sync(upgrade)

    async def close(self) -> None:
        await self.engine.dispose()

    # cases -----------------------------------------------------------------------------------------

    async def get_case(self, case_id: str) -> Case | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(t.cases).where(t.cases.c.id == case_id))).first()
        return rows.case(row) if row else None

    async def save_case(self, case: Case, events: Sequence[Event] = ()) -> None:
        values = rows.values(t.cases, case, exclude=("id",))
        values["updated_at"] = case.updated_at or case.opened_at
        async with begin_write(self.engine) as conn:
            updated = await conn.execute(sa.update(t.cases).where(t.cases.c.id == case.id).values(**values))
            if updated.rowcount == 0:
                await conn.execute(sa.insert(t.cases).values(id=case.id, **values))
            await append_events(conn, events)

    async def list_cases(self, state: CaseState | None = None) -> list[Case]:
        query = sa.select(t.cases).order_by(t.cases.c.id)
        if state is not None:
            query = query.where(t.cases.c.state == state.value)
        async with self.engine.connect() as conn:
            return [rows.case(r) for r in await conn.execute(query)]

    async def claim_cases_for_purge(self, due: Sequence[tuple[str, dt.datetime | None]]) -> list[str]:
        """Mark these cases ``purging`` where each is still closed since its ``closed_at`` (or already
        purging), in one transaction (one commit); the ids claimed.

        The condition is the fence against a reopening: one ``UPDATE`` per 500 cases carries every case's own
        condition (``(id, closed_at)`` pairs), so a case reopened or closed again after the sweep read it is
        left alone."""
        claimed: list[str] = []
        async with begin_write(self.engine) as conn:
            for start in range(0, len(due), _IN_CHUNK):
                chunk = list(due[start : start + _IN_CHUNK])
                ids = [case_id for case_id, _ in chunk]
                pairs = [(case_id, closed_at) for case_id, closed_at in chunk if closed_at is not None]
                condition = t.cases.c.state == CaseState.PURGING.value
                if pairs:
                    still_due = sa.and_(
                        t.cases.c.state == CaseState.CLOSED.value,
                        sa.tuple_(t.cases.c.id, t.cases.c.closed_at).in_(pairs),
                    )
                    condition = sa.or_(condition, still_due)
                await conn.execute(
                    sa.update(t.cases)
                    .where(t.cases.c.id.in_(ids), condition)
                    .values(state=CaseState.PURGING.value)
                )
                purging = await conn.execute(
                    sa.select(t.cases.c.id).where(
                        t.cases.c.id.in_(ids), t.cases.c.state == CaseState.PURGING.value
                    )
                )
                found = {row.id for row in purging}
                claimed.extend(case_id for case_id in ids if case_id in found)
        return claimed

    async def delete_purged_cases(
        self, case_ids: Sequence[str], audit: Sequence[AuditEvent], events: Sequence[Event] = ()
    ) -> None:
        """Remove every row of these cases (not the audit trail), scrub their outbox events and
        record ``audit`` and ``events``, all in one transaction: a crash leaves the cases ``purging`` with no
        event, or gone with every event."""
        async with begin_write(self.engine) as conn:
            for start in range(0, len(case_ids), _IN_CHUNK):
                chunk = list(case_ids[start : start + _IN_CHUNK])
                for table in (t.files, t.uploads, t.sessions, t.sftp_accounts):
                    await conn.execute(sa.delete(table).where(table.c.case_id.in_(chunk)))
                await conn.execute(sa.delete(t.cases).where(t.cases.c.id.in_(chunk)))
            if audit:
                await conn.execute(
                    sa.insert(t.audit_events),
                    [rows.values(t.audit_events, e, exclude=("id",)) for e in audit],
                )
            await scrub_purged_events(conn, case_ids)
            await append_events(conn, events)

    # files -----------------------------------------------------------------------------------------

    async def add_file(self, record: FileRecord) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(sa.insert(t.files).values(**rows.values(t.files, record)))

    async def get_file(self, case_id: str, file_id: str) -> FileRecord | None:
        query = sa.select(t.files).where(t.files.c.id == file_id, t.files.c.case_id == case_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return rows.file(row) if row else None

    async def list_files(self, case_id: str) -> list[FileRecord]:
        query = (
            sa.select(t.files)
            .where(t.files.c.case_id == case_id)
            .order_by(t.files.c.uploaded_at, t.files.c.id)
        )
        async with self.engine.connect() as conn:
            return [rows.file(r) for r in await conn.execute(query)]

    async def list_files_of_cases(self, case_ids: Sequence[str]) -> list[FileRecord]:
        """The files of all these cases, by case and then in upload order: one query per 500 cases."""
        out: list[FileRecord] = []
        async with self.engine.connect() as conn:
            for start in range(0, len(case_ids), _IN_CHUNK):
                query = (
                    sa.select(t.files)
                    .where(t.files.c.case_id.in_(list(case_ids[start : start + _IN_CHUNK])))
                    .order_by(t.files.c.case_id, t.files.c.uploaded_at, t.files.c.id)
                )
                out.extend(rows.file(r) for r in await conn.execute(query))
        return out

    async def list_files_page(self, case_id: str, limit: int, after: Position | None) -> list[FileRecord]:
        """At most ``limit`` files of the case in ``(uploaded_at, id)`` order, after ``after`` if given."""
        c = t.files.c
        query = sa.select(t.files).where(c.case_id == case_id).order_by(c.uploaded_at, c.id).limit(limit)
        if after is not None:
            query = query.where(_after(c.uploaded_at, c.id, after))
        async with self.engine.connect() as conn:
            return [rows.file(r) for r in await conn.execute(query)]

    async def files_named(self, case_id: str, name: str) -> list[FileRecord]:
        """The case's files with exactly this name (an indexed lookup), oldest first."""
        c = t.files.c
        query = sa.select(t.files).where(c.case_id == case_id, c.name == name).order_by(c.uploaded_at, c.id)
        async with self.engine.connect() as conn:
            return [rows.file(r) for r in await conn.execute(query)]

    async def delete_file(
        self, case_id: str, file_id: str, audit: AuditEvent | None = None, events: Sequence[Event] = ()
    ) -> bool:
        """Delete a file's row, and store ``audit`` in the same transaction (one commit, not two)."""
        async with begin_write(self.engine) as conn:
            result = await conn.execute(
                sa.delete(t.files).where(t.files.c.id == file_id, t.files.c.case_id == case_id)
            )
            if audit is not None:
                await conn.execute(_insert_audit(audit))
            if result.rowcount:  # a file deleted twice (two requests at once) is reported once
                await append_events(conn, events)
        return bool(result.rowcount)

    # uploads ---------------------------------------------------------------------------------------

    async def add_upload(self, upload: Upload) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(sa.insert(t.uploads).values(**rows.values(t.uploads, upload)))

    async def get_upload(self, upload_id: str) -> Upload | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(t.uploads).where(t.uploads.c.id == upload_id))).first()
        return rows.upload(row) if row else None

    async def list_uploads(self, case_id: str, state: UploadState | None = None) -> list[Upload]:
        query = sa.select(t.uploads).where(t.uploads.c.case_id == case_id).order_by(t.uploads.c.created_at)
        if state is not None:
            query = query.where(t.uploads.c.state == state.value)
        async with self.engine.connect() as conn:
            return [rows.upload(r) for r in await conn.execute(query)]

    async def list_uploads_of_cases(self, case_ids: Sequence[str]) -> list[Upload]:
        """The uploads of all these cases, by case and then oldest first: one query per 500 cases."""
        out: list[Upload] = []
        async with self.engine.connect() as conn:
            for start in range(0, len(case_ids), _IN_CHUNK):
                query = (
                    sa.select(t.uploads)
                    .where(t.uploads.c.case_id.in_(list(case_ids[start : start + _IN_CHUNK])))
                    .order_by(t.uploads.c.case_id, t.uploads.c.created_at)
                )
                out.extend(rows.upload(r) for r in await conn.execute(query))
        return out

    async def list_expired_uploads(self, now: dt.datetime) -> list[Upload]:
        query = sa.select(t.uploads).where(t.uploads.c.expires_at <= now)
        async with self.engine.connect() as conn:
            return [rows.upload(r) for r in await conn.execute(query)]

    @staticmethod
    def _active(case_id: str, now: dt.datetime) -> sa.ColumnElement[bool]:
        c = t.uploads.c
        return sa.and_(
            c.case_id == case_id,
            c.state == UploadState.ACTIVE.value,
            c.expires_at > now,
            c.concat != ConcatKind.FINAL.value,
        )

    async def list_active_uploads_page(
        self, case_id: str, now: dt.datetime, limit: int, after: Position | None
    ) -> list[Upload]:
        """At most ``limit`` unfinished, unexpired uploads of the case (no final concatenations) in
        ``(created_at, id)`` order, after ``after`` if given."""
        c = t.uploads.c
        query = (
            sa.select(t.uploads).where(self._active(case_id, now)).order_by(c.created_at, c.id).limit(limit)
        )
        if after is not None:
            query = query.where(_after(c.created_at, c.id, after))
        async with self.engine.connect() as conn:
            return [rows.upload(r) for r in await conn.execute(query)]

    async def active_uploads_named(self, case_id: str, name: str, now: dt.datetime) -> list[Upload]:
        """The case's unfinished, unexpired uploads with this exact name (an indexed lookup), oldest first."""
        c = t.uploads.c
        query = (
            sa.select(t.uploads)
            .where(self._active(case_id, now), c.name == name)
            .order_by(c.created_at, c.id)
        )
        async with self.engine.connect() as conn:
            return [rows.upload(r) for r in await conn.execute(query)]

    async def count_active_uploads(self, case_id: str, now: dt.datetime) -> int:
        query = sa.select(sa.func.count()).select_from(t.uploads).where(self._active(case_id, now))
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def save_progress(self, upload: Upload, fence: int | None = None) -> None:
        """Record the upload's offset, length, name, times and the digest state that goes with the offset.

        With ``fence`` (the token of a cross-node lease), only while that lease still has that fence: a holder
        that lost its lock gets :class:`UploadLocked` and records nothing.
        """
        condition = [t.uploads.c.id == upload.id]
        lease = f"upload:{upload.id}"
        if fence is not None:
            condition.append(sa.exists().where(t.leases.c.name == lease, t.leases.c.fence == fence))
        async with begin_write(self.engine) as conn:
            if fence is not None and self.dialect == "postgresql":
                # Keep the lease row still until this commits: a takeover waits, then sees the new offset.
                await conn.execute(
                    sa.select(t.leases.c.fence).where(t.leases.c.name == lease).with_for_update(read=True)
                )
            result = await conn.execute(
                sa.update(t.uploads)
                .where(*condition)
                .values(
                    offset=upload.offset,
                    length=upload.length,
                    updated_at=upload.updated_at,
                    expires_at=upload.expires_at,
                    name=upload.name,
                    digest_state=upload.digest_state,
                )
            )
        if fence is not None and result.rowcount == 0:
            raise UploadLocked("A newer request took over this upload; this request's data was not recorded.")

    async def set_upload_state(
        self, upload_id: str, state: UploadState, at: dt.datetime, events: Sequence[Event] = ()
    ) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(
                sa.update(t.uploads)
                .where(t.uploads.c.id == upload_id)
                .values(state=state.value, updated_at=at)
            )
            await append_events(conn, events)

    async def finish_upload(
        self, upload: Upload, record: FileRecord | None, events: Sequence[Event] = ()
    ) -> None:
        """Mark the upload finished and, unless it is a partial, add its file (and store ``events``), in one
        transaction."""
        async with begin_write(self.engine) as conn:
            await conn.execute(
                sa.update(t.uploads)
                .where(t.uploads.c.id == upload.id)
                .values(
                    state=UploadState.FINISHED.value,
                    digest_state=None,
                    name=upload.name,
                    offset=upload.offset,
                    length=upload.length,
                    updated_at=upload.updated_at,
                    expires_at=upload.expires_at,
                )
            )
            if record is not None:
                await conn.execute(sa.insert(t.files).values(**rows.values(t.files, record)))
            await append_events(conn, events)

    async def delete_upload(self, upload_id: str) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(sa.delete(t.uploads).where(t.uploads.c.id == upload_id))

    # sessions and launch tokens ----------------------------------------------------------------------

    async def add_session(self, session: Session) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(sa.insert(t.sessions).values(**rows.values(t.sessions, session)))

    async def get_session(self, id_hash: str) -> Session | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(t.sessions).where(t.sessions.c.id_hash == id_hash))).first()
        if row is None:
            return None
        return rows.session(row)

    async def delete_session(self, id_hash: str) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(sa.delete(t.sessions).where(t.sessions.c.id_hash == id_hash))

    async def delete_expired(self, now: dt.datetime) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(sa.delete(t.sessions).where(t.sessions.c.expires_at <= now))
            await conn.execute(sa.delete(t.launch_tokens).where(t.launch_tokens.c.expires_at <= now))

    async def use_launch_jti(self, jti: str, expires_at: dt.datetime) -> bool:
        """Record a launch token's ``jti``; ``False`` if it was used before."""
        try:
            async with begin_write(self.engine) as conn:
                await conn.execute(sa.insert(t.launch_tokens).values(jti=jti, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    # audit -----------------------------------------------------------------------------------------

    async def add_audit(self, event: AuditEvent, events: Sequence[Event] = ()) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(_insert_audit(event))
            await append_events(conn, events)

    async def list_audit(self, case_id: str | None = None, limit: int = 1000) -> list[AuditEvent]:
        query = sa.select(t.audit_events).order_by(t.audit_events.c.id).limit(limit)
        if case_id is not None:
            query = query.where(t.audit_events.c.case_id == case_id)
        async with self.engine.connect() as conn:
            return [rows.audit(r) for r in await conn.execute(query)]

    # file metadata and SFTP accounts ----------------------------------------------------------------

    async def update_file(
        self, case_id: str, file_id: str, *, name: str | None = None, modified_at: dt.datetime | None = None
    ) -> bool:
        """Change a completed file's name and/or its recorded modification time; ``False`` if unknown."""
        values: dict[str, Any] = {}
        if name is not None:
            values["name"] = name
        if modified_at is not None:
            values["modified_at"] = modified_at
        if not values:
            return await self.get_file(case_id, file_id) is not None
        async with begin_write(self.engine) as conn:
            result = await conn.execute(
                sa.update(t.files)
                .where(t.files.c.id == file_id, t.files.c.case_id == case_id)
                .values(**values)
            )
        return bool(result.rowcount)

    async def add_account(self, account: SftpAccount, events: Sequence[Event] = ()) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(sa.insert(t.sftp_accounts).values(**rows.values(t.sftp_accounts, account)))
            await append_events(conn, events)

    async def get_account(self, username: str) -> SftpAccount | None:
        query = sa.select(t.sftp_accounts).where(t.sftp_accounts.c.username == username)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return rows.account(row) if row else None

    async def list_accounts(
        self, case_id: str | None = None, limit: int | None = None, after: Position | None = None
    ) -> list[SftpAccount]:
        """Accounts in ``(created_at, username)`` order; at most ``limit``, after ``after``, if given."""
        c = t.sftp_accounts.c
        query = sa.select(t.sftp_accounts).order_by(c.created_at, c.username).limit(limit)
        if case_id is not None:
            query = query.where(c.case_id == case_id)
        if after is not None:
            query = query.where(_after(c.created_at, c.username, after))
        async with self.engine.connect() as conn:
            return [rows.account(r) for r in await conn.execute(query)]

    async def revoke_account(self, username: str, at: dt.datetime, events: Sequence[Event] = ()) -> bool:
        """Record the revocation time (the first one stays if revoked twice) and store ``events`` with it;
        ``False`` (and no events) if it was revoked already."""
        async with begin_write(self.engine) as conn:
            result = await conn.execute(
                sa.update(t.sftp_accounts)
                .where(t.sftp_accounts.c.username == username, t.sftp_accounts.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            if result.rowcount:
                await append_events(conn, events)
        return bool(result.rowcount)

    async def set_account_keys(self, username: str, keys: list[str]) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(
                sa.update(t.sftp_accounts)
                .where(t.sftp_accounts.c.username == username)
                .values(authorized_keys=list(keys))
            )

    async def record_account_login(self, username: str, at: dt.datetime) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(
                sa.update(t.sftp_accounts)
                .where(t.sftp_accounts.c.username == username)
                .values(last_login_at=at)
            )


def _after(at: sa.ColumnElement[Any], item_id: sa.ColumnElement[Any], position: Position) -> Any:
    """Rows strictly after ``position`` in ``(at, id)`` order (the keyset condition)."""
    stamp, last = position
    return sa.or_(at > stamp, sa.and_(at == stamp, item_id > last))
