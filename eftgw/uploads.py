"""UploadService: create, append at an offset, finish and terminate uploads, for every transport.

The workflow of an append (one tus PATCH, or a run of SFTP writes):

1. take the upload's lock (a newer request takes over a stale one);
2. check the case is open and the offset is the durable one;
3. stream the body into the store in blocks, hashing on the way (whole-file SHA-256/xxh128, and the
   request's own checksum if it has one); reading the next block overlaps writing the previous one;
4. on a checksum mismatch, roll back to the old offset; on a dropped body without a checksum, keep what
   arrived; then commit (fsync) and only then record the new offset, which is what gets acknowledged;
5. when the offset reaches the length, promote the staging data to the case's object and add the file.

Steps 3 and 4, and the digests' state, are the body pipeline in :mod:`eftgw.ingest`.

The whole-file digests' state is saved in the same commit as the offset it belongs to (the progress row),
so whichever node continues an upload continues its digests without reading stored data. Only where there
is no usable state (none could be exported on that node, or it is not the state of the durable offset:
after a truncate there is none) is the stored prefix read once to rebuild them; those bytes are counted in
the ``eftgw_digest_reread_bytes`` metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Sequence

from eftgw import metrics
from eftgw.audit import AuditLog
from eftgw.cases import CaseService
from eftgw.clock import Clock
from eftgw.errors import (
    BadRequest,
    BodyInterrupted,
    DomainError,
    Forbidden,
    LengthExceeded,
    OffsetMismatch,
    StorageUnavailable,
    TooManyRequests,
    UploadGone,
    UploadIncomplete,
    UploadNotFound,
    UploadTooLarge,
)
from eftgw.events import Event, EventFactory
from eftgw.hashing import ChunkChecksum, FileDigests
from eftgw.ids import new_file_id, new_upload_id
from eftgw.ingest import Ingest, rehash
from eftgw.locks import UploadLocks
from eftgw.model import ConcatKind, FileRecord, Principal, SystemPrincipal, Transport, Upload, UploadState
from eftgw.names import sanitize_content_type, sanitize_name
from eftgw.pagination import Page, decode_cursor, page_of
from eftgw.ports import UploadRepository
from eftgw.quotas import CreationRate
from eftgw.storage import ObjectNotFound, ObjectStore, object_key, staging_key

log = logging.getLogger("eftgw.uploads")

TOMBSTONE = dt.timedelta(days=1)
MAX_LENGTH = 2**63 - 1  # the largest size the metadata database stores (a signed 64-bit integer)
ACTIVE_QUOTA_RETRY_SECONDS = 60  # a guess: uploads in progress usually finish within minutes


class UploadService:
    def __init__(
        self,
        repo: UploadRepository,
        store: ObjectStore,
        cases: CaseService,
        locks: UploadLocks,
        audit: AuditLog,
        clock: Clock,
        *,
        region: str,
        events: EventFactory,
        expiry: dt.timedelta,
        max_size: int | None = None,
        max_active_per_case: int | None = None,
        creation_rate: CreationRate | None = None,
    ) -> None:
        self.repo = repo
        self.store = store
        self.cases = cases
        self.locks = locks
        self.audit = audit
        self.clock = clock
        self.region = region
        self.events = events
        self.expiry = expiry
        self.max_size = max_size
        self.ingest = Ingest(repo, store, clock, expiry=expiry, require_open=cases.require_open)
        self.max_active_per_case = max_active_per_case
        self.creation_rate = creation_rate

    # creation --------------------------------------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        case_id: str,
        *,
        length: int | None,
        metadata: dict[str, str],
        via: Transport = Transport.HTTP,
        concat: ConcatKind = ConcatKind.NONE,
        partial_ids: list[str] | None = None,
    ) -> Upload:
        """Create an upload. ``length=None`` defers the length (creation-defer-length)."""
        if not principal.may_access_case(case_id):
            raise UploadNotFound("No such case for this sign-in.")
        await self.cases.require_open(case_id)
        await self._check_quotas(principal, case_id)
        partials: list[Upload] = []
        if concat is ConcatKind.FINAL:
            partials = await self._resolve_partials(principal, case_id, partial_ids or [])
            length = sum(p.length or 0 for p in partials)
        if length is not None:
            if not 0 <= length <= MAX_LENGTH:
                raise BadRequest(f"Upload-Length must be from 0 to {MAX_LENGTH}.")
            self.check_size(length)
        now = self.clock.now()
        upload_id = new_upload_id()
        name = sanitize_name(metadata.get("filename") or metadata.get("name"))
        upload = Upload(
            id=upload_id,
            case_id=case_id,
            file_id=new_file_id(),
            name=name,
            length=length,
            offset=0,
            state=UploadState.ACTIVE,
            created_at=now,
            updated_at=now,
            expires_at=now + self.expiry,
            created_by=principal.user,
            source=principal.source,
            via=via,
            staging_key=staging_key(case_id, upload_id),
            metadata=metadata,
            concat=concat,
            partials=[p.id for p in partials],
            content_type=sanitize_content_type(metadata.get("filetype") or metadata.get("type")),
        )
        # The row first: a length or name the database refuses must leave no staging data behind.
        await self.repo.add_upload(upload)
        if concat is not ConcatKind.FINAL:
            # A plain upload is staged for its file's key (S3: a multipart upload that completes into it).
            target = object_key(case_id, upload.file_id) if concat is ConcatKind.NONE else None
            try:
                await self.store.create_staging(upload.staging_key, target)
            except Exception:
                await self.repo.delete_upload(upload.id)
                raise
        await self.audit.record(
            "upload.created", principal, case_id, upload.id, name=name, length=length, concat=concat.value
        )
        if concat is ConcatKind.FINAL or length == 0:
            async with self.locks.hold(upload.id):
                await self._complete(upload, principal, None)
        return upload

    async def _check_quotas(self, principal: Principal, case_id: str) -> None:
        """Refuse a new upload past the principal's creation rate or the case's number of unfinished ones."""
        if isinstance(principal, SystemPrincipal):
            return
        if self.max_active_per_case is not None:
            active = await self.repo.count_active_uploads(case_id, self.clock.now())
            if active >= self.max_active_per_case:
                raise TooManyRequests(
                    f"This case already has {active} unfinished uploads, the most the gateway keeps at once; "
                    "finish or cancel some before starting more.",
                    retry_after=ACTIVE_QUOTA_RETRY_SECONDS,
                )
        if self.creation_rate is not None:
            self.creation_rate.take(principal)

    async def _resolve_partials(self, principal: Principal, case_id: str, ids: list[str]) -> list[Upload]:
        if not ids:
            raise BadRequest("A final upload must name its partial uploads.")
        partials = []
        for upload_id in ids:
            partial = await self.repo.get_upload(upload_id)
            if partial is None or partial.case_id != case_id or partial.concat is not ConcatKind.PARTIAL:
                raise UploadNotFound("A partial upload named in the concatenation does not exist.")
            if partial.state is UploadState.TERMINATED:
                raise UploadGone("A partial upload named in the concatenation has expired or was cancelled.")
            if partial.state is not UploadState.FINISHED:
                raise UploadIncomplete()
            partials.append(partial)
        return partials

    async def continue_file(
        self, principal: Principal, case_id: str, record: FileRecord, *, via: Transport
    ) -> Upload:
        """Reopen a finished file for appending: a new upload whose staging data starts as a copy of the
        file's bytes, at offset = its size, named like it (``metadata["continues"]`` holds its id).

        The file itself is untouched and stays listed; whoever finishes the upload decides what happens to
        it (SFTP replaces it). The copy goes through the store's public contract (read the object, write the
        staging data, one commit), so it costs one read and one write of the file on any backend; the
        whole-file digests are computed from the bytes as they are copied (a finished file keeps no digest
        state), counted in ``eftgw_digest_reread_bytes``, and must equal the file's recorded SHA-256.
        """
        if record.case_id != case_id:
            raise UploadNotFound("No such file in this case.")
        upload = await self.create(
            principal,
            case_id,
            length=None,
            metadata={"filename": record.name, "continues": record.id},
            via=via,
        )
        try:
            async with self.locks.hold(upload.id) as lease:
                await self.ingest.copy_in(upload, record, lease)
        except BaseException:
            async with self.locks.hold(upload.id):
                await asyncio.shield(self._discard(upload))
            raise
        await self.audit.record(
            "upload.continued", principal, case_id, upload.id, file_id=record.id, size=record.size
        )
        return upload

    # reading ---------------------------------------------------------------------------------------

    async def get(self, principal: Principal, case_id: str, upload_id: str) -> Upload:
        """The upload as a client may see it; finishes a complete upload a crash left unfinished."""
        upload = await self._visible(principal, case_id, upload_id)
        if upload.state is UploadState.ACTIVE and (upload.is_complete or upload.concat is ConcatKind.FINAL):
            async with self.locks.hold(upload.id):
                upload = await self._visible(principal, case_id, upload_id)
                if upload.state is UploadState.ACTIVE:
                    await self._complete(upload, principal, None)
        return upload

    async def list_active(self, principal: Principal, case_id: str) -> list[Upload]:
        if not principal.may_access_case(case_id):
            raise UploadNotFound("No such case for this sign-in.")
        await self.cases.get(case_id)
        now = self.clock.now()
        return [
            u
            for u in await self.repo.list_uploads(case_id, UploadState.ACTIVE)
            if u.expires_at > now and u.concat is not ConcatKind.FINAL
        ]

    async def page_active(
        self, principal: Principal, case_id: str, limit: int, cursor: str | None = None
    ) -> Page[Upload]:
        """One page of :meth:`list_active` in ``(created_at, id)`` order, after ``cursor`` if given."""
        if not principal.may_access_case(case_id):
            raise UploadNotFound("No such case for this sign-in.")
        after = decode_cursor(cursor) if cursor else None
        await self.cases.get(case_id)
        uploads = await self.repo.list_active_uploads_page(case_id, self.clock.now(), limit + 1, after)
        return page_of(uploads, limit, lambda u: (u.created_at, u.id))

    async def active_named(
        self, principal: Principal, case_id: str, name: str, via: Transport | None = None
    ) -> list[Upload]:
        """The case's uploads in progress with exactly this name (and transport), oldest first: one indexed
        query, whatever the case holds."""
        if not principal.may_access_case(case_id):
            raise UploadNotFound("No such case for this sign-in.")
        uploads = await self.repo.active_uploads_named(case_id, name, self.clock.now())
        return [u for u in uploads if via is None or u.via == via]

    async def _visible(self, principal: Principal, case_id: str, upload_id: str) -> Upload:
        if not principal.may_access_case(case_id):
            raise UploadNotFound()
        upload = await self.repo.get_upload(upload_id)
        if upload is None or upload.case_id != case_id:
            raise UploadNotFound()
        if upload.state is UploadState.TERMINATED:
            raise UploadGone()
        if upload.state is UploadState.ACTIVE and upload.expires_at <= self.clock.now():
            raise UploadGone()
        return upload

    # appending -------------------------------------------------------------------------------------

    def check_size(self, size: int) -> None:
        """Raise :class:`UploadTooLarge` if a file of ``size`` bytes would exceed the gateway's limit."""
        if self.max_size is not None and size > self.max_size:
            raise UploadTooLarge(f"The file exceeds the gateway's size limit of {self.max_size} bytes.")

    async def append(
        self,
        principal: Principal,
        case_id: str,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        *,
        checksum: ChunkChecksum | None = None,
        declared_length: int | None = None,
        body_size: int | None = None,
    ) -> Upload:
        """Append a request body at ``offset``; return the upload with its new durable offset.

        ``body_size`` is the body's size if the transport knows it in advance (``Content-Length``): a body
        that cannot fit is refused before a byte of it is read. Whatever the transport says, no byte past
        the upload's length or the gateway's size limit is ever stored.

        Raises :class:`OffsetMismatch` unless ``offset`` is the durable offset, :class:`ChecksumMismatch` (the
        chunk discarded), :class:`LengthExceeded` and :class:`UploadTooLarge` (the chunk discarded),
        :class:`CaseClosed`, and :class:`BodyInterrupted` after keeping what arrived when the transport lost
        the body.
        """
        await self._visible(principal, case_id, upload_id)
        async with self.locks.hold(upload_id) as lease:
            upload = await self._visible(principal, case_id, upload_id)
            if upload.concat is ConcatKind.FINAL:
                raise Forbidden("A final (concatenated) upload cannot be written to.")
            if upload.state is UploadState.FINISHED:
                if offset != upload.offset:
                    raise OffsetMismatch()
                if await _has_data(body):
                    raise LengthExceeded("This upload is already complete.")
                return upload
            await self.cases.require_open(case_id)
            if offset != upload.offset:
                raise OffsetMismatch(
                    f"The upload is at offset {upload.offset}, not {offset}; resume from {upload.offset}."
                )
            if declared_length is not None:
                self._declare_length(upload, declared_length)
            if body_size is not None:
                self._check_room(upload, upload.offset + body_size)
            try:
                digests = await self.ingest.digests_for(upload)
                await self.ingest.write_body(
                    upload, body, digests, checksum, lease, lambda end: self._check_room(upload, end)
                )
                if upload.is_complete:
                    await self._complete(upload, principal, digests)
            except StorageUnavailable as exc:
                # Nothing past the durable offset was kept; tell the client where its upload stands.
                log.warning("upload %s kept at offset %d: %s", upload.id, upload.offset, exc.message)
                raise exc.kept_at(upload.offset) from exc
            return upload

    def _declare_length(self, upload: Upload, length: int) -> None:
        if upload.length is not None:
            if upload.length != length:
                raise BadRequest("Upload-Length cannot be changed once set.")
            return
        if length < upload.offset:
            raise BadRequest("Upload-Length is smaller than what was already uploaded.")
        self.check_size(length)
        upload.length = length

    def _check_room(self, upload: Upload, end: int) -> None:
        """Refuse data that would end at ``end``: past the declared length, or past the size limit."""
        if upload.length is not None and end > upload.length:
            raise LengthExceeded()
        self.check_size(end)

    # completion ------------------------------------------------------------------------------------

    async def _complete(self, upload: Upload, principal: Principal, digests: FileDigests | None) -> None:
        """Turn a complete upload into a file (idempotent; also run to recover after a crash)."""
        key = object_key(upload.case_id, upload.file_id)
        tags = {"case": upload.case_id, "region": self.region, "file": upload.file_id}
        if upload.concat is ConcatKind.PARTIAL:
            await self.repo.finish_upload(upload, None)
            upload.state = UploadState.FINISHED
            self.ingest.forget(upload.id)
            return
        if upload.concat is ConcatKind.FINAL:
            partials = [await self.repo.get_upload(pid) for pid in upload.partials]
            await self.store.concatenate([p.staging_key for p in partials if p is not None], key, tags)
            digests = None
        elif digests is None or digests.size != upload.offset:
            digests = None
            with contextlib.suppress(ObjectNotFound):
                digests = await self.ingest.digests_for(upload)
        if digests is None:
            digests = FileDigests()
            await rehash(
                self.store.read_object(key), digests
            )  # a concatenation, or a promoted upload's recovery
            upload.offset = digests.size
            upload.length = digests.size
        if upload.concat is not ConcatKind.FINAL:
            await self.store.promote(upload.staging_key, key, {**tags, "sha256": digests.sha256_hex})
        now = self.clock.now()
        record = FileRecord(
            id=upload.file_id,
            case_id=upload.case_id,
            name=upload.name,
            size=digests.size,
            sha256=digests.sha256_hex,
            xxh128=digests.xxh128_hex,
            object_key=key,
            content_type=upload.content_type,
            uploaded_at=now,
            uploaded_by=upload.created_by,
            source=upload.source,
            via=upload.via,
        )
        upload.updated_at = now
        upload.expires_at = now + self.expiry
        finished = self.events.make(
            "file.finished",
            upload.case_id,
            file_id=record.id,
            name=record.name,
            size=record.size,
            sha256=record.sha256,
            uploader=principal.user,
            role=principal.role.value,
            via=Transport(upload.via).value,
            client=principal.remote,
        )
        await self.repo.finish_upload(upload, record, [finished])
        upload.state = UploadState.FINISHED
        self.ingest.forget(upload.id)
        if upload.concat is ConcatKind.FINAL:
            for pid in upload.partials:
                partial = await self.repo.get_upload(pid)
                if partial is not None:
                    await self.store.delete_staging(partial.staging_key)
                    await self.repo.delete_upload(pid)
        metrics.UPLOADS_COMPLETED.labels(upload.via).inc()
        await self.audit.record(
            "upload.completed",
            principal,
            upload.case_id,
            upload.id,
            file_id=record.id,
            size=record.size,
            sha256=record.sha256,
            via=upload.via,
        )

    # finishing, renaming and truncating (transports without a declared length: SFTP) ----------------

    async def finish(
        self, principal: Principal, case_id: str, upload_id: str, *, name: str | None = None
    ) -> Upload:
        """Finish an upload at what was received: its length becomes its offset and it becomes a file.

        ``name`` (sanitised) renames it in the same step. An upload that is already finished is returned as
        it is. Raises :class:`UploadIncomplete` if a declared length was not reached yet, :class:`CaseClosed`,
        :class:`UploadNotFound` and :class:`UploadGone`.
        """
        await self._visible(principal, case_id, upload_id)
        async with self.locks.hold(upload_id):
            upload = await self._visible(principal, case_id, upload_id)
            if upload.concat is not ConcatKind.NONE:
                raise Forbidden("Only plain uploads can be finished this way.")
            if upload.state is UploadState.FINISHED:
                return upload
            await self.cases.require_open(case_id)
            if upload.length is not None and upload.length != upload.offset:
                raise UploadIncomplete(
                    f"The upload has {upload.offset} of its {upload.length} bytes; send the rest first."
                )
            if name is not None:
                upload.name = sanitize_name(name)
            upload.length = upload.offset
            await self._complete(upload, principal, None)
            return upload

    async def rename(self, principal: Principal, case_id: str, upload_id: str, name: str) -> Upload:
        """Change the name an unfinished upload will have as a file (metadata only, no data moves)."""
        await self._visible(principal, case_id, upload_id)
        async with self.locks.hold(upload_id):
            upload = await self._visible(principal, case_id, upload_id)
            if upload.state is not UploadState.ACTIVE:
                raise Forbidden("This upload is complete; rename the file instead.")
            old = upload.name
            upload.name = sanitize_name(name)
            await self.repo.save_progress(upload)
            await self.audit.record("upload.renamed", principal, case_id, upload_id, old=old, new=upload.name)
            return upload

    async def truncate(self, principal: Principal, case_id: str, upload_id: str, size: int) -> Upload:
        """Cut an unfinished upload back to ``size`` bytes, which must not exceed its durable offset."""
        await self._visible(principal, case_id, upload_id)
        async with self.locks.hold(upload_id):
            upload = await self._visible(principal, case_id, upload_id)
            if upload.state is not UploadState.ACTIVE or upload.concat is not ConcatKind.NONE:
                raise Forbidden("Only an unfinished plain upload can be truncated.")
            await self.cases.require_open(case_id)
            if size == upload.offset:
                return upload
            if not 0 <= size < upload.offset:
                raise BadRequest(f"The upload has {upload.offset} durable bytes; it cannot be cut to {size}.")
            writer = await self.store.open_writer(upload.staging_key, size, upload.via)
            try:
                durable = await writer.commit()
            finally:
                await writer.close()
            if durable != size:
                raise RuntimeError(f"store reports {durable} durable bytes after truncating to {size}")
            self.ingest.forget(upload.id)
            old = upload.offset
            now = self.clock.now()
            upload.offset = size
            upload.digest_state = None  # the next append re-reads what is left: never a state of other bytes
            upload.updated_at = now
            upload.expires_at = now + self.expiry
            await self.repo.save_progress(upload)
            await self.audit.record("upload.truncated", principal, case_id, upload_id, old=old, new=size)
            return upload

    # termination and expiry ------------------------------------------------------------------------

    async def terminate(self, principal: Principal, case_id: str, upload_id: str) -> None:
        """Cancel an upload: its stored data is deleted at once; the URL answers 410 for a while."""
        await self._visible(principal, case_id, upload_id)
        async with self.locks.hold(upload_id):
            upload = await self._visible(principal, case_id, upload_id)
            if upload.state is UploadState.FINISHED and upload.concat is not ConcatKind.PARTIAL:
                raise Forbidden("This upload is complete; delete the file instead.")
            await self._discard(upload)
            await self.audit.record("upload.terminated", principal, case_id, upload_id)

    async def _discard(self, upload: Upload, events: Sequence[Event] = ()) -> None:
        await self.store.delete_staging(upload.staging_key)
        now = self.clock.now()
        await self.repo.set_upload_state(upload.id, UploadState.TERMINATED, now, events)
        upload.state = UploadState.TERMINATED
        upload.expires_at = now + TOMBSTONE
        upload.digest_state = None
        await self.repo.save_progress(upload)
        self.ingest.forget(upload.id)

    async def of_cases(self, principal: SystemPrincipal, case_ids: Sequence[str]) -> dict[str, list[Upload]]:
        """Every upload of these cases, by case, in one query (a purge's batch reads them at once)."""
        if not isinstance(principal, SystemPrincipal):  # a caller outside the type checker's sight
            raise Forbidden("Only the gateway's retention may list the uploads of many cases.")
        found: dict[str, list[Upload]] = {case_id: [] for case_id in case_ids}
        for upload in await self.repo.list_uploads_of_cases(case_ids):
            found[upload.case_id].append(upload)
        return found

    async def discard_case(
        self, principal: SystemPrincipal, case_id: str, uploads: Sequence[Upload] | None = None
    ) -> int:
        """Cancel every upload of the case (its purge): data goes, a running writer is taken over first.
        ``uploads`` are the case's uploads if the caller has read them already (:meth:`of_cases`); the case
        is being purged then, so no new upload can start in between."""
        if not isinstance(principal, SystemPrincipal):  # a caller outside the type checker's sight
            raise Forbidden("Only the gateway's retention may discard a case's uploads.")
        count = 0
        for upload in await self.repo.list_uploads(case_id) if uploads is None else uploads:
            async with self.locks.hold(upload.id):
                await self.store.delete_staging(upload.staging_key)
                self.ingest.forget(upload.id)
                if upload.state is UploadState.ACTIVE:
                    await self.audit.record(
                        "upload.terminated", principal, case_id, upload.id, reason="retention"
                    )
                count += 1
        return count

    async def sweep_expired(self, principal: SystemPrincipal) -> int:
        """Delete the data of idle unfinished uploads and forget old upload records; return how many."""
        count = 0
        for upload in await self.repo.list_expired_uploads(self.clock.now()):
            async with self.locks.hold(upload.id):
                current = await self.repo.get_upload(upload.id)
                if current is None or current.expires_at > self.clock.now():
                    continue
                unfinished = current.state is UploadState.ACTIVE or (
                    current.state is UploadState.FINISHED and current.concat is ConcatKind.PARTIAL
                )
                if unfinished:
                    expired = self.events.make(
                        "upload.expired",
                        current.case_id,
                        upload_id=current.id,
                        name=current.name,
                        offset=current.offset,
                        length=current.length,
                    )
                    await self._discard(current, [expired])
                    await self.audit.record("upload.expired", principal, current.case_id, current.id)
                    count += 1
                else:
                    await self.store.delete_staging(current.staging_key)
                    await self.repo.delete_upload(current.id)
        return count


async def _has_data(body: AsyncIterator[bytes]) -> bool:
    async for chunk in body:
        if chunk:
            return True
    return False


__all__ = ["BodyInterrupted", "DomainError", "UploadService"]
