"""The ports of the core: what each service needs from metadata storage, one protocol per aggregate.

The core owns these contracts; :class:`eftgw.metadata.SqlRepository` (SQLite or PostgreSQL) implements every
one of them, and the composition root (:mod:`eftgw.gateway`) hands it to each service as the port that
service needs. Nothing here imports a database library, so the core loads without one.

Rules every implementation keeps: unknown ids read as ``None`` (or ``False``, or an empty list), never an
exception; each method is one transaction, so a crash leaves the old state or the new one, never a mix.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol

from eftgw.events import Delivery, Event
from eftgw.model import AuditEvent, Case, CaseState, FileRecord, Session, SftpAccount, Upload, UploadState
from eftgw.pagination import Position


class CaseRepository(Protocol):
    """Cases and their lifecycle."""

    async def get_case(self, case_id: str) -> Case | None: ...
    async def save_case(self, case: Case, events: Sequence[Event] = ()) -> None:
        """Insert or update the case, and store ``events`` (its lifecycle events) in the same transaction."""
        ...

    async def file_totals(self, case_id: str) -> tuple[int, int]:
        """How many files the case has and their total bytes."""
        ...

    async def list_cases(self, state: CaseState | None = None) -> list[Case]: ...
    async def claim_cases_for_purge(self, due: Sequence[tuple[str, dt.datetime | None]]) -> list[str]:
        """Move each case closed since its ``closed_at`` (or already purging) to ``purging``, all in one
        transaction; the ids claimed. A case reopened or closed again since is left out, so a reopening
        always wins over a purge."""
        ...

    async def delete_purged_cases(
        self, case_ids: Sequence[str], audit: Sequence[AuditEvent], events: Sequence[Event] = ()
    ) -> None:
        """Delete every row of these cases (files, uploads, sessions, accounts, the cases), delete their
        delivered and dead outbox events and drop file names from their pending ones, and record ``audit``
        and ``events``, in one transaction."""
        ...


class FileRepository(Protocol):
    """Completed files of a case."""

    async def add_file(self, record: FileRecord) -> None: ...
    async def get_file(self, case_id: str, file_id: str) -> FileRecord | None: ...
    async def list_files(self, case_id: str) -> list[FileRecord]: ...
    async def list_files_of_cases(self, case_ids: Sequence[str]) -> list[FileRecord]:
        """The files of all these cases at once (a purge's batch)."""
        ...

    async def list_files_page(self, case_id: str, limit: int, after: Position | None) -> list[FileRecord]: ...
    async def files_named(self, case_id: str, name: str) -> list[FileRecord]: ...
    async def update_file(
        self, case_id: str, file_id: str, *, name: str | None = None, modified_at: dt.datetime | None = None
    ) -> bool: ...
    async def delete_file(
        self, case_id: str, file_id: str, audit: AuditEvent | None = None, events: Sequence[Event] = ()
    ) -> bool:
        """Delete the file's row, and record ``audit`` and ``events`` in the same transaction; ``False`` (and
        no events) if it was gone."""
        ...


class UploadRepository(Protocol):
    """Uploads in progress; finishing one adds its file in the same transaction."""

    async def add_upload(self, upload: Upload) -> None: ...
    async def get_upload(self, upload_id: str) -> Upload | None: ...
    async def list_uploads(self, case_id: str, state: UploadState | None = None) -> list[Upload]: ...
    async def list_uploads_of_cases(self, case_ids: Sequence[str]) -> list[Upload]:
        """The uploads of all these cases at once (a purge's batch)."""
        ...

    async def list_expired_uploads(self, now: dt.datetime) -> list[Upload]: ...
    async def list_active_uploads_page(
        self, case_id: str, now: dt.datetime, limit: int, after: Position | None
    ) -> list[Upload]: ...
    async def active_uploads_named(self, case_id: str, name: str, now: dt.datetime) -> list[Upload]: ...
    async def count_active_uploads(self, case_id: str, now: dt.datetime) -> int: ...
    async def save_progress(self, upload: Upload, fence: int | None = None) -> None:
        """Record the upload's new offset (what gets acknowledged). With a ``fence``, only while the upload's
        lease still carries it; otherwise :class:`~eftgw.errors.UploadLocked`."""
        ...

    async def set_upload_state(
        self, upload_id: str, state: UploadState, at: dt.datetime, events: Sequence[Event] = ()
    ) -> None:
        """Set the upload's state, storing ``events`` in the same transaction."""
        ...

    async def finish_upload(
        self, upload: Upload, record: FileRecord | None, events: Sequence[Event] = ()
    ) -> None:
        """Mark the upload finished and add ``record`` (its file) and ``events``, atomically."""
        ...

    async def delete_upload(self, upload_id: str) -> None: ...


class SessionRepository(Protocol):
    """Browser sessions (only a hash of the cookie is kept) and used launch-token ids."""

    async def add_session(self, session: Session) -> None: ...
    async def get_session(self, id_hash: str) -> Session | None: ...
    async def delete_session(self, id_hash: str) -> None: ...
    async def delete_expired(self, now: dt.datetime) -> None: ...
    async def use_launch_jti(self, jti: str, expires_at: dt.datetime) -> bool:
        """Record a launch token's ``jti``; ``False`` if it was used before (tokens are single-use)."""
        ...


class AuditRepository(Protocol):
    """The append-only audit trail."""

    async def add_audit(self, event: AuditEvent, events: Sequence[Event] = ()) -> None:
        """Record ``event``, and ``events`` (integration events of the action) in the same transaction."""
        ...

    async def list_audit(self, case_id: str | None = None, limit: int = 1000) -> list[AuditEvent]: ...


class AccountRepository(Protocol):
    """Temporary SFTP accounts of cases."""

    async def add_account(self, account: SftpAccount, events: Sequence[Event] = ()) -> None: ...
    async def get_account(self, username: str) -> SftpAccount | None: ...
    async def list_accounts(
        self, case_id: str | None = None, limit: int | None = None, after: Position | None = None
    ) -> list[SftpAccount]: ...
    async def revoke_account(self, username: str, at: dt.datetime, events: Sequence[Event] = ()) -> bool:
        """Record the revocation (the first time stays) with ``events``; ``False`` and no events if it was
        revoked already."""
        ...

    async def accounts_expired_unreported(self, now: dt.datetime, limit: int = 500) -> list[SftpAccount]:
        """Accounts expired by ``now`` (and not revoked before) whose ``sftp_account.expired`` event was not
        stored yet."""
        ...

    async def report_expired_accounts(self, reports: Sequence[tuple[str, Event]], at: dt.datetime) -> int:
        """For each ``(username, event)``: mark the account's expiry reported and store its event, unless it
        was reported already (so each expiry has exactly one event). All in one transaction; how many."""
        ...

    async def set_account_keys(self, username: str, keys: list[str]) -> None: ...
    async def record_account_login(self, username: str, at: dt.datetime) -> None: ...


class EventRepository(Protocol):
    """The outbox of integration events (:mod:`eftgw.events`) and their delivery state.

    Change methods of the other ports that report an event take it as ``events=`` and store it in their own
    transaction; :meth:`add_events` is for events that accompany no other change. Stored events get a ``seq``
    that is strictly increasing in commit order (on PostgreSQL the appends of concurrent transactions are
    serialised for that).
    """

    async def add_events(self, events: Sequence[Event]) -> None:
        """Store ``events`` in one transaction of their own, pending delivery."""
        ...

    async def events_after(self, after: int, limit: int) -> list[Event]:
        """Stored events with ``seq > after``, oldest first, at most ``limit`` (the pull API)."""
        ...

    async def due_deliveries(self, now: dt.datetime, limit: int) -> list[Delivery]:
        """Pending events that may be sent now: for each case its oldest pending event (dead ones no longer
        hold a case back), if its ``next_attempt_at`` has come; events without a case are each their own
        queue. Oldest first."""
        ...

    async def record_delivered(self, seq: int, at: dt.datetime, status: int) -> None: ...
    async def record_failure(
        self, seq: int, next_attempt_at: dt.datetime, status: int | None, error: str
    ) -> None:
        """Count a failed attempt and set when the next may be made."""
        ...

    async def record_dead(self, seq: int, at: dt.datetime, status: int | None, error: str) -> None:
        """Give up on an event (too old): it becomes a dead letter an operator can list and replay."""
        ...

    async def list_deliveries(self, state: str | None, after: int, limit: int) -> list[Delivery]:
        """Events with their delivery state, ``seq > after``, oldest first; ``state`` is ``pending``,
        ``delivered``, ``dead`` or ``None`` for all."""
        ...

    async def replay(self, event_ids: Sequence[str] | None, now: dt.datetime) -> int:
        """Make these dead (or, with ``None``, all dead) events pending again, due at once, attempts reset;
        their ids are unchanged. How many."""
        ...

    async def outbox_stats(self) -> tuple[int, dt.datetime | None]:
        """How many events are pending, and when the oldest pending one happened."""
        ...

    async def prune_events(self, before: dt.datetime) -> int:
        """Delete delivered and dead events that happened before ``before``; how many."""
        ...


class ScrubRepository(CaseRepository, FileRepository, Protocol):
    """What the integrity scrub reads: the cases and their files."""


class MetadataRepository(
    CaseRepository,
    FileRepository,
    UploadRepository,
    SessionRepository,
    AuditRepository,
    AccountRepository,
    EventRepository,
    Protocol,
):
    """Every port at once, plus the schema's lifecycle: what the composition root builds and hands out."""

    async def migrate(self) -> None: ...
    async def close(self) -> None: ...
