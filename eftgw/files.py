"""FileService: list, read (ranges), and delete the completed files of a case."""

from __future__ import annotations

import builtins
import datetime as dt
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from eftgw.audit import AuditLog
from eftgw.cases import CaseService
from eftgw.errors import FileNotFound, Forbidden, RangeNotSatisfiable
from eftgw.events import EventFactory, transport_of
from eftgw.model import AuditEvent, CaseState, FileRecord, Principal, Role, SystemPrincipal
from eftgw.names import sanitize_name
from eftgw.pagination import Page, decode_cursor, page_of
from eftgw.ports import FileRepository
from eftgw.storage import ObjectStore, object_key, staging_key

log = logging.getLogger("eftgw.files")


@dataclass
class Download:
    """A file opened for reading ``[start, end)``; ``stream`` yields exactly those bytes."""

    record: FileRecord
    start: int
    end: int
    stream: AsyncIterator[bytes]

    @property
    def partial(self) -> bool:
        return self.start != 0 or self.end != self.record.size


class FileService:
    def __init__(
        self,
        repo: FileRepository,
        store: ObjectStore,
        cases: CaseService,
        audit: AuditLog,
        *,
        events: EventFactory,
    ) -> None:
        self.repo = repo
        self.store = store
        self.cases = cases
        self.audit = audit
        self.events = events

    async def list(self, principal: Principal, case_id: str) -> list[FileRecord]:
        if not principal.may_access_case(case_id):
            raise FileNotFound("No such case for this sign-in.")
        await self.cases.get(case_id)
        return await self.repo.list_files(case_id)

    async def page(
        self, principal: Principal, case_id: str, limit: int, cursor: str | None = None
    ) -> Page[FileRecord]:
        """One page of the case's files in ``(uploaded_at, id)`` order, after ``cursor`` if given."""
        if not principal.may_access_case(case_id):
            raise FileNotFound("No such case for this sign-in.")
        after = decode_cursor(cursor) if cursor else None
        await self.cases.get(case_id)
        records = await self.repo.list_files_page(case_id, limit + 1, after)
        return page_of(records, limit, lambda r: (r.uploaded_at, r.id))

    async def named(self, principal: Principal, case_id: str, name: str) -> builtins.list[FileRecord]:
        """The case's files with exactly this name, oldest first: one indexed query, whatever it holds."""
        if not principal.may_access_case(case_id):
            raise FileNotFound("No such case for this sign-in.")
        return await self.repo.files_named(case_id, name)

    async def get(self, principal: Principal, case_id: str, file_id: str) -> FileRecord:
        if not principal.may_access_case(case_id):
            raise FileNotFound()
        record = await self.repo.get_file(case_id, file_id)
        if record is None:
            raise FileNotFound()
        return record

    async def open(
        self, principal: Principal, case_id: str, file_id: str, start: int = 0, end: int | None = None
    ) -> Download:
        """Open ``[start, end)`` of a file (``end`` exclusive, ``None`` for the rest); audited."""
        record = await self.get(principal, case_id, file_id)
        end = record.size if end is None else min(end, record.size)
        if record.size == 0 and start == 0:
            end = 0
        elif start >= record.size or start >= end:
            raise RangeNotSatisfiable()
        stream = self.store.read_object(record.object_key, start, end)
        downloaded = self.events.make(
            "file.downloaded",
            case_id,
            file_id=file_id,
            name=record.name,
            size=record.size,
            by=principal.user,
            role=principal.role.value,
            via=transport_of(principal),
            client=principal.remote,
        )
        await self.audit.record(
            "file.downloaded",
            principal,
            case_id,
            file_id,
            integration=[downloaded],
            start=start,
            end=end,
            size=record.size,
        )
        return Download(record, start, end, stream)

    def may_delete(self, principal: Principal, record: FileRecord, state: CaseState) -> bool:
        if principal.role is Role.ENGINEER:
            return True
        return principal.role is Role.CUSTOMER and record.source == "customer" and state is CaseState.OPEN

    async def delete(self, principal: Principal, case_id: str, file_id: str) -> None:
        """A user deletes a file: allowed only as :meth:`may_delete` says, for every caller."""
        await self._delete_if_allowed(principal, case_id, file_id, "user", "You may not delete this file.")

    async def delete_replaced(self, principal: Principal, case_id: str, file_id: str) -> None:
        """A newer file of the same name replaces this one (SFTP): a delete with the same permission check as
        :meth:`delete`, reported with the reason ``replaced``."""
        refusal = "You may not replace this file."
        await self._delete_if_allowed(principal, case_id, file_id, "replaced", refusal)

    async def _delete_if_allowed(
        self,
        principal: Principal,
        case_id: str,
        file_id: str,
        reason: Literal["user", "replaced"],
        refusal: str,
    ) -> None:
        record = await self.get(principal, case_id, file_id)
        case = await self.cases.get(case_id)
        if not self.may_delete(principal, record, case.state):
            raise Forbidden(refusal)
        await self._remove(principal, record, reason)

    async def purge(self, principal: SystemPrincipal, case_id: str, file_id: str) -> None:
        """Retention deletes a file of a case being purged: no user's permission applies, so it takes the
        gateway's own :class:`SystemPrincipal` (a type, checked by mypy, that no login produces)."""
        if not isinstance(principal, SystemPrincipal):  # a caller outside the type checker's sight
            raise Forbidden("Only the gateway's retention may purge files.")
        record = await self.get(principal, case_id, file_id)
        await self._remove(principal, record, "retention")

    async def of_cases(
        self, principal: SystemPrincipal, case_ids: Sequence[str]
    ) -> dict[str, builtins.list[FileRecord]]:
        """Every file of these cases, by case, in one query (a purge's batch reads them at once)."""
        if not isinstance(principal, SystemPrincipal):  # a caller outside the type checker's sight
            raise Forbidden("Only the gateway's retention may list the files of many cases.")
        found: dict[str, builtins.list[FileRecord]] = {case_id: [] for case_id in case_ids}
        for record in await self.repo.list_files_of_cases(case_ids):
            found[record.case_id].append(record)
        return found

    async def purge_objects(
        self, principal: SystemPrincipal, records: Sequence[FileRecord]
    ) -> builtins.list[AuditEvent]:
        """Retention deletes the stored objects of these files of a case being purged, and gets back each
        file's ``file.deleted`` event (as :meth:`purge` records it). The rows and the events are the
        caller's to commit, together with the rest of the case (:meth:`CaseService.remove_purged`), so a
        whole batch of cases costs one transaction instead of one per file. Deleting an object again is
        harmless, so a purge that failed midway is simply done again."""
        if not isinstance(principal, SystemPrincipal):  # a caller outside the type checker's sight
            raise Forbidden("Only the gateway's retention may purge files.")
        await self.store.delete_objects([record.object_key for record in records])
        return [
            self.audit.event(
                "file.deleted",
                principal,
                record.case_id,
                record.id,
                size=record.size,
                sha256=record.sha256,
                reason="retention",
            )
            for record in records
        ]

    async def purge_leftovers(
        self, principal: SystemPrincipal, case_id: str
    ) -> tuple[int, builtins.list[str]]:
        """Retention lists every store prefix of a case (objects and staging), removes what is there, and
        lists again: ``(removed, still there)``. The second listing is the proof nothing is left."""
        if not isinstance(principal, SystemPrincipal):
            raise Forbidden("Only the gateway's retention may purge files.")
        prefixes = [object_key(case_id, ""), staging_key(case_id, "")]
        removed = 0
        for prefix in prefixes:
            for key in await self.store.list_keys(prefix):
                log.warning("purge of %s: removing leftover %s", case_id, key)
                await self.store.delete_object(key)
                await self.store.delete_staging(key)
                removed += 1
        if not removed:
            return 0, []  # the listing just made is the proof
        return removed, [key for prefix in prefixes for key in await self.store.list_keys(prefix)]

    async def _remove(
        self, principal: Principal, record: FileRecord, reason: Literal["user", "replaced", "retention"]
    ) -> None:
        """Delete the object, then the row with its audit event (and, unless retention purges it, its
        ``file.deleted`` integration event) in one transaction."""
        await self.store.delete_object(record.object_key)
        event = self.audit.event(
            "file.deleted",
            principal,
            record.case_id,
            record.id,
            size=record.size,
            sha256=record.sha256,
            reason=reason,
        )
        deleted = self.events.make(
            "file.deleted",
            record.case_id,
            file_id=record.id,
            name=record.name,
            size=record.size,
            by=principal.user,
            role=principal.role.value,
            reason=reason,
        )
        integration = [] if reason == "retention" else [deleted]  # a purge reports the case, not each file
        await self.repo.delete_file(record.case_id, record.id, audit=event, events=integration)
        self.audit.logged(event)

    async def rename(self, principal: Principal, case_id: str, file_id: str, name: str) -> FileRecord:
        """Give a file a new (sanitised) name: metadata only. Allowed to whoever may delete the file."""
        record = await self._changeable(principal, case_id, file_id)
        old = record.name
        record.name = sanitize_name(name)
        await self.repo.update_file(case_id, file_id, name=record.name)
        await self.audit.record("file.renamed", principal, case_id, file_id, old=old, new=record.name)
        return record

    async def set_modified(
        self, principal: Principal, case_id: str, file_id: str, modified_at: dt.datetime
    ) -> FileRecord:
        """Record the modification time a client reports for a file (SFTP ``setstat``); metadata only."""
        record = await self._changeable(principal, case_id, file_id)
        record.modified_at = modified_at
        await self.repo.update_file(case_id, file_id, modified_at=modified_at)
        return record

    async def _changeable(self, principal: Principal, case_id: str, file_id: str) -> FileRecord:
        record = await self.get(principal, case_id, file_id)
        case = await self.cases.get(case_id)
        if not self.may_delete(principal, record, case.state):
            raise Forbidden("You may not change this file.")
        return record
