"""The SFTP file system of one session: asyncssh's :class:`SFTPServer` over the case area and the core.

Every request normalises its paths once (:mod:`eftgw.sftp.paths`), checks that the session may go on (account
active, case open), calls the core services and translates their errors (:mod:`eftgw.sftp.status`).

How SFTP operations map onto the core:

- ``open`` for writing creates an upload (``UploadService.create``, ``via="sftp"``, length deferred) or,
  without ``TRUNC``, continues the upload in progress of that name from its durable size; writes go through a
  bounded buffer (:mod:`eftgw.sftp.buffer`). A completed file is never written to: opening it with ``TRUNC``
  uploads a new version; opening it without continues it (``UploadService.continue_file``: a new upload that
  starts as a copy of it, at its size) if this account uploaded it, and is refused otherwise. A continuation
  closed with nothing added is dropped and the file kept.
- when an upload finishes as a file, the customer's older files of that name are deleted (a name shows one
  file; the earlier version stays listed until then).
- an explicit ``close`` finishes the upload (``UploadService.finish``: its length is what was received) unless
  its name is temporary (``.filepart``, ``.partial``); a handle closed because the connection ended only
  makes the received data durable. Renaming a temporary name to a final one finishes the upload.
- ``stat``/``fstat``/listings report an upload's durable size; ``setstat`` records times and accepts a size
  equal to the durable size (or truncates back to a smaller one).
- ``rename`` fails if the target exists (SFTP v3); ``posix-rename@openssh.com`` replaces it: the target's
  upload in progress is cancelled and the files the customer had under that name are removed. Renaming a
  file also removes the customer's older files of its old name (they would show again). Renames only
  change metadata. ``remove`` cancels an upload or removes the customer's file (every version of that name).
- folders, links and symlinks are refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from asyncssh import (
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_TRUNC,
    FXF_WRITE,
    SFTPAttrs,
    SFTPFailure,
    SFTPName,
    SFTPNoSuchFile,
    SFTPOpUnsupported,
    SFTPPermissionDenied,
    SFTPServer,
    SFTPVFSAttrs,
    SSHServerChannel,
)

from eftgw.cases import CaseService
from eftgw.errors import DomainError, FileNotFound, Forbidden, UploadTooLarge
from eftgw.files import FileService
from eftgw.memory import SFTP_WRITE_BUFFER
from eftgw.model import FileRecord, Principal, Transport, Upload, UploadState
from eftgw.sftp.area import OWNERS, CaseArea, Entry, root_attrs
from eftgw.sftp.buffer import BufferedUpload, WriterDetached, WriterRegistry, WriterRetired
from eftgw.sftp.handles import ReadHandle, WriteHandle
from eftgw.sftp.limits import FileBudget, node_budget
from eftgw.sftp.paths import ROOT, case_name, display_path, is_temporary
from eftgw.sftp.status import translated
from eftgw.storage.budget import BufferBudget
from eftgw.uploads import UploadService

log = logging.getLogger("eftgw.sftp")

MIB = 1024 * 1024


class SessionGuard(Protocol):
    """The live login behind an SFTP session."""

    principal: Principal

    async def authorize(self) -> None:
        """Raise :class:`~eftgw.errors.Unauthenticated` (and cut the connection) if the account has expired
        or was revoked, or the case is no longer open."""
        ...


@dataclass
class SftpContext:
    """What the SFTP sessions of one gateway process share."""

    uploads: UploadService
    files: FileService
    cases: CaseService
    writers: WriterRegistry = field(default_factory=WriterRegistry)
    pending_mtimes: dict[str, int] = field(default_factory=dict)  # upload id -> mtime set before finishing
    buffer_capacity: int = SFTP_WRITE_BUFFER  # per handle (eftgw.memory counts it in an upload's 64 MiB)
    part_size: int = 64 * MIB
    max_write_handles: int = 8
    budget: FileBudget = field(
        default_factory=lambda: FileBudget(per_session=64, per_account=128, node=node_budget(512))
    )
    # What all write handles of the node queue together (EFTGW_SFTP_WRITE_MEMORY); writes wait beyond it.
    write_memory: BufferBudget = field(default_factory=lambda: BufferBudget(64 * MIB))

    def remember_mtime(self, upload_id: str, seconds: int) -> None:
        if len(self.pending_mtimes) >= 10_000:  # bounded: forget the oldest
            self.pending_mtimes.pop(next(iter(self.pending_mtimes)))
        self.pending_mtimes[upload_id] = seconds


class CaseSFTPServer(SFTPServer):
    """One SFTP session of a customer, confined to their case area."""

    def __init__(self, chan: SSHServerChannel[bytes], context: SftpContext, guard: SessionGuard) -> None:
        super().__init__(chan)
        self.ctx = context
        self.guard = guard
        self.principal = guard.principal
        self.case_id = guard.principal.case_id or ""
        self.area = CaseArea(context.uploads, context.files, self.principal, self.case_id)
        self._writes: set[WriteHandle] = set()
        self._reads: set[ReadHandle] = set()
        self._tearing_down = False
        self.files_open = context.budget.session(self.principal.user)

    @property
    def max_open_handles(self) -> int:
        """The handles this session may hold open at once (told to clients through ``limits@openssh.com``)."""
        return self.ctx.budget.per_session

    def begin_teardown(self) -> None:
        """The connection is ending: handles closed from now on keep their data but do not finish."""
        self._tearing_down = True

    # names and attributes ------------------------------------------------------------------------

    def format_user(self, uid: int | None) -> str:
        return OWNERS.get(uid or 0, "nobody")

    def format_group(self, gid: int | None) -> str:
        return "case"

    def realpath(self, path: bytes) -> bytes:
        return display_path(case_name(path))

    async def stat(self, path: bytes) -> SFTPAttrs:
        with translated("stat"):
            name = case_name(path)
            await self.guard.authorize()
            if name == ROOT:
                return root_attrs((await self.ctx.cases.get(self.case_id)).opened_at)
            return (await self._entry(name)).attrs()

    async def lstat(self, path: bytes) -> SFTPAttrs:
        return await self.stat(path)

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        if isinstance(file_obj, ReadHandle):
            return Entry(file_obj.record.name, record=file_obj.record).attrs()
        handle = self._write_handle(file_obj)
        now = int(dt.datetime.now(dt.UTC).timestamp())
        return SFTPAttrs(
            type=1,
            size=handle.buffer.durable,
            permissions=stat.S_IFREG | 0o644,
            atime=now,
            mtime=handle.mtime_seconds or now,
        )

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        with translated("readdir"):
            name = case_name(path)
            await self.guard.authorize()
            if name != ROOT:
                await self._entry(name, settled=False)
                raise SFTPNoSuchFile(f"{name} is a file, not a folder.")
            case = await self.ctx.cases.get(self.case_id)
            entries = await self.area.entries()
        here = root_attrs(case.opened_at)
        yield SFTPName(b".", attrs=here)
        yield SFTPName(b"..", attrs=here)
        for entry in entries.values():
            yield SFTPName(entry.name.encode("utf-8"), attrs=entry.attrs())

    # opening, reading, writing, closing ----------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> object:
        with translated("open"):
            name = case_name(path)
            await self.guard.authorize()
            if name == ROOT:
                raise SFTPFailure("/ is the case folder; open a file in it.")
            self.files_open.opening()  # each handle holds a descriptor: counted before it is made
            try:
                if pflags & (FXF_WRITE | FXF_APPEND):
                    return await self._open_for_write(name, pflags)
                entry = await self._entry(name, settled=False)  # an upload is refused either way
                if entry.record is None:
                    raise SFTPPermissionDenied(
                        f"{name} is still being uploaded; it can be read when complete."
                    )
                handle = ReadHandle(self.ctx.files, self.principal, entry.record)
                await handle.start()
                self._reads.add(handle)
                return handle
            except BaseException:
                self.files_open.closed()
                raise

    async def _open_for_write(self, name: str, pflags: int) -> WriteHandle:
        if len(self._writes) >= self.ctx.max_write_handles:
            raise SFTPFailure(
                f"At most {self.ctx.max_write_handles} files can be open for writing in one session."
            )
        entry = await self.area.lookup(name)
        if entry is not None and pflags & FXF_EXCL:
            raise SFTPFailure(f"{name} already exists.")
        upload: Upload | None = None
        if entry is None:
            if not pflags & FXF_CREAT:
                raise SFTPNoSuchFile(f"No file named {name}.")
        elif entry.record is not None:
            if entry.from_engineer:
                raise SFTPPermissionDenied(f"{name} was placed by an engineer and is read-only.")
            if not pflags & FXF_TRUNC:
                if entry.record.uploaded_by != self.principal.user:
                    raise SFTPPermissionDenied(
                        f"{name} was uploaded by another sign-in and cannot be continued; overwrite it or "
                        "upload under another name."
                    )
                # A resume of a file a client finished too early (Ctrl-C sends CLOSE): continue it.
                upload = await self.ctx.uploads.continue_file(
                    self.principal, self.case_id, entry.record, via=Transport.SFTP
                )
        elif entry.upload is not None:
            if pflags & FXF_TRUNC:
                await self._cancel_upload(entry.upload, "The upload was started again from the beginning.")
            else:
                await self.ctx.writers.take_over(entry.upload.id)
                upload = await self.ctx.uploads.get(self.principal, self.case_id, entry.upload.id)
        if upload is None:
            upload = await self.ctx.uploads.create(
                self.principal, self.case_id, length=None, metadata={"filename": name}, via=Transport.SFTP
            )
        buffer = BufferedUpload(
            self.ctx.uploads,
            self.principal,
            self.case_id,
            upload.id,
            upload.offset,
            capacity=self.ctx.buffer_capacity,
            part_size=self.ctx.part_size,
            budget=self.ctx.write_memory,
        )
        self.ctx.writers.register(buffer)
        handle = WriteHandle(upload.id, bool(pflags & FXF_APPEND), buffer)
        self._writes.add(handle)
        return handle

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        if not isinstance(file_obj, ReadHandle):
            raise SFTPPermissionDenied("This file was opened for writing only.")
        with translated("read"):
            return await file_obj.read(offset, size)

    async def write(self, file_obj: object, offset: int, data: bytes | memoryview) -> int:
        handle = self._write_handle(file_obj)
        with translated("write"):
            buffer = handle.buffer
            if buffer.error is not None:
                if isinstance(buffer.error, Forbidden):  # e.g. the case closed under the upload
                    await self.guard.authorize()
                raise buffer.error
            if offset != buffer.end and (not handle.append or offset != 0):
                # With APPEND an offset is only a hint, except one that shows the client believes the end is
                # elsewhere (a stat taken before data of an earlier connection landed): appending would
                # duplicate bytes or leave a gap in the file, so that write is refused. Offset 0 is
                # an append of a client that names no offset at all.
                raise SFTPFailure(
                    f"This upload continues at byte {buffer.end}, not {offset}: writes must follow each "
                    f"other without gaps, and a resumed upload starts at the size that stat reports."
                )
            if data:
                try:
                    self.ctx.uploads.check_size(buffer.end + len(data))
                except UploadTooLarge as exc:
                    # Keep what came before; this write and every later one is refused, and the upload is
                    # not finished by a close (a cut-off file must not look complete).
                    await buffer.detach(exc)
                    raise
                await buffer.write(data)
            return len(data)

    async def fsync(self, file_obj: object) -> None:
        if isinstance(file_obj, WriteHandle):
            with translated("fsync"):
                await file_obj.buffer.flush()

    async def close(self, file_obj: object) -> None:
        if isinstance(file_obj, ReadHandle):
            if file_obj in self._reads:
                self._reads.discard(file_obj)
                self.files_open.closed()
            await file_obj.close()
            return
        if not isinstance(file_obj, WriteHandle):
            return
        if file_obj in self._writes:
            self._writes.discard(file_obj)
            self.files_open.closed()
        buffer = file_obj.buffer
        if self._tearing_down:
            await self._keep(file_obj)
            return
        with translated("close"):
            try:
                await buffer.flush()
            except WriterRetired:
                return  # finished by a rename while open; nothing was left to write
            finally:
                self.ctx.writers.release(buffer)
            await self.guard.authorize()  # what arrived is kept, but a revoked account finishes nothing
            upload = await self.ctx.uploads.get(self.principal, self.case_id, file_obj.upload_id)
            if upload.state is not UploadState.ACTIVE:
                return
            if is_temporary(upload.name):
                if file_obj.mtime_seconds is not None:
                    self.ctx.remember_mtime(upload.id, file_obj.mtime_seconds)
                return
            if await self._unchanged_continuation(upload, file_obj.mtime_seconds):
                return
            await self._finish(upload.id, None, file_obj.mtime_seconds)

    async def _unchanged_continuation(self, upload: Upload, mtime: int | None) -> bool:
        """A file reopened to continue it but closed with nothing added: drop the copy, keep the file."""
        continued = upload.metadata.get("continues")
        record = await self._file_or_none(continued) if continued is not None else None
        if record is None or record.name != upload.name or record.size != upload.offset:
            return False
        await self._cancel_upload(upload, "Nothing was added to the continued file.")
        remembered = self.ctx.pending_mtimes.pop(upload.id, None)
        mtime = mtime if mtime is not None else remembered
        if mtime is not None:
            when = dt.datetime.fromtimestamp(mtime, dt.UTC)
            await self.ctx.files.set_modified(self.principal, self.case_id, record.id, when)
        return True

    async def _file_or_none(self, file_id: str) -> FileRecord | None:
        try:
            return await self.ctx.files.get(self.principal, self.case_id, file_id)
        except FileNotFound:
            return None

    async def _keep(self, handle: WriteHandle) -> None:
        """Teardown: make what arrived durable; the upload stays in progress for the client to resume."""
        try:
            await handle.buffer.flush()
        except DomainError as exc:
            log.warning(
                "SFTP upload %s: data after byte %d not kept: %s",
                handle.upload_id,
                handle.buffer.durable,
                exc.message,
            )
        finally:
            self.ctx.writers.release(handle.buffer)
        if handle.mtime_seconds is not None:
            self.ctx.remember_mtime(handle.upload_id, handle.mtime_seconds)

    async def _finish(self, upload_id: str, name: str | None, mtime: int | None) -> Upload:
        upload = await self.ctx.uploads.finish(self.principal, self.case_id, upload_id, name=name)
        remembered = self.ctx.pending_mtimes.pop(upload_id, None)
        mtime = mtime if mtime is not None else remembered
        if mtime is not None:
            when = dt.datetime.fromtimestamp(mtime, dt.UTC)
            await self.ctx.files.set_modified(self.principal, self.case_id, upload.file_id, when)
        record = await self._file_or_none(upload.file_id)
        if record is not None:
            await self._drop_older_versions(record)
        return upload

    async def _drop_older_versions(self, record: FileRecord) -> None:
        """A name shows one file: the customer's older files of ``record``'s name are deleted (audited)."""
        for older in await self.area.versions(record.name):
            if older.source != "engineer" and (older.uploaded_at, older.id) < (record.uploaded_at, record.id):
                with contextlib.suppress(FileNotFound):
                    await self.ctx.files.delete_replaced(self.principal, self.case_id, older.id)

    def exit(self) -> None:
        self._reads.clear()
        self._writes.clear()
        self.files_open.close_all()

    # attributes ----------------------------------------------------------------------------------

    async def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        with translated("setstat"):
            name = case_name(path)
            await self.guard.authorize()
            if name == ROOT:
                return
            entry = await self._entry(name)
            if entry.upload is not None:
                upload = entry.upload
                if attrs.size is not None:
                    writer = self.ctx.writers.get(upload.id)
                    if writer is not None:
                        await self._resize(writer, attrs.size)
                    elif attrs.size != upload.offset:
                        await self.ctx.uploads.truncate(self.principal, self.case_id, upload.id, attrs.size)
                if attrs.mtime is not None:
                    self.ctx.remember_mtime(upload.id, int(attrs.mtime))
            elif entry.record is not None:
                await self._setstat_file(entry.record, attrs)

    async def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        await self.setstat(path, attrs)

    async def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        with translated("fsetstat"):
            await self.guard.authorize()
            if isinstance(file_obj, ReadHandle):
                await self._setstat_file(file_obj.record, attrs)
                return
            handle = self._write_handle(file_obj)
            if attrs.size is not None:
                await self._resize(handle.buffer, attrs.size)
            if attrs.mtime is not None:
                handle.mtime_seconds = int(attrs.mtime)

    async def _resize(self, buffer: BufferedUpload, size: int) -> None:
        """A size attribute on an upload: equal to the durable size is accepted, smaller truncates back."""
        await buffer.flush()
        if size == buffer.durable:
            return
        if size > buffer.durable:
            raise SFTPFailure(f"Only {buffer.durable} bytes of this upload are stored, not {size}.")
        upload = await self.ctx.uploads.truncate(self.principal, self.case_id, buffer.upload_id, size)
        buffer.restart_at(upload.offset)

    async def _setstat_file(self, record: FileRecord, attrs: SFTPAttrs) -> None:
        if attrs.size is not None and attrs.size != record.size:
            raise SFTPPermissionDenied(f"{record.name} is complete; its size cannot change.")
        if attrs.mtime is not None:
            when = dt.datetime.fromtimestamp(int(attrs.mtime), dt.UTC)
            await self.ctx.files.set_modified(self.principal, self.case_id, record.id, when)

    # renaming and removing -----------------------------------------------------------------------

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath, replace=False)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath, replace=True)

    async def _rename(self, oldpath: bytes, newpath: bytes, *, replace: bool) -> None:
        with translated("rename"):
            old, new = case_name(oldpath), case_name(newpath)
            if ROOT in (old, new):
                raise SFTPPermissionDenied("The case folder itself cannot be renamed or replaced.")
            await self.guard.authorize()
            source = await self._entry(old, settled=False)  # _rename_upload settles what it renames
            if old == new:
                return
            target = await self.area.lookup(new)
            replaced_files: list[FileRecord] = []
            replaced_uploads: list[Upload] = []
            if target is not None:
                if not replace:
                    raise SFTPFailure(f"{new} already exists; remove it first (or use posix-rename).")
                if target.from_engineer:
                    raise SFTPPermissionDenied(f"{new} was placed by an engineer and cannot be replaced.")
                replaced_files = [r for r in await self.area.versions(new) if r.source != "engineer"]
                replaced_uploads = await self.area.uploads_named(new)
            if source.upload is not None:
                await self._rename_upload(source.upload, old, new)
            elif source.record is not None:
                if source.from_engineer:
                    raise SFTPPermissionDenied(f"{old} was placed by an engineer and is read-only.")
                await self._drop_older_versions(source.record)  # else they would show under the old name
                await self.ctx.files.rename(self.principal, self.case_id, source.record.id, new)
            for upload in replaced_uploads:
                if source.upload is None or upload.id != source.upload.id:
                    await self._cancel_upload(upload, f"{new} was replaced by a rename.")
            for record in replaced_files:
                if source.record is None or record.id != source.record.id:
                    with contextlib.suppress(FileNotFound):  # a finishing upload may have replaced it
                        await self.ctx.files.delete_replaced(self.principal, self.case_id, record.id)

    async def _rename_upload(self, upload: Upload, old: str, new: str) -> None:
        if is_temporary(old) and not is_temporary(new):
            await self.ctx.writers.take_over(upload.id, WriterRetired())
            mtime = next((h.mtime_seconds for h in self._writes if h.upload_id == upload.id), None)
            await self._finish(upload.id, new, mtime)
            return
        await self.ctx.writers.settle(upload.id)
        await self.ctx.uploads.rename(self.principal, self.case_id, upload.id, new)

    async def remove(self, path: bytes) -> None:
        with translated("remove"):
            name = case_name(path)
            if name == ROOT:
                raise SFTPPermissionDenied("The case folder cannot be removed.")
            await self.guard.authorize()
            entry = await self._entry(name, settled=False)  # an upload's buffered bytes are discarded
            if entry.upload is not None:
                await self._cancel_upload(entry.upload, "The upload was removed.")
                return
            if entry.from_engineer:
                raise SFTPPermissionDenied(f"{name} was placed by an engineer and cannot be removed.")
            for record in await self.area.versions(name):
                if record.source != "engineer":
                    await self.ctx.files.delete(self.principal, self.case_id, record.id)

    async def _cancel_upload(self, upload: Upload, reason: str) -> None:
        await self.ctx.writers.discard(upload.id, WriterDetached(reason))
        await self.ctx.uploads.terminate(self.principal, self.case_id, upload.id)
        self.ctx.pending_mtimes.pop(upload.id, None)

    # what the case area does not have ------------------------------------------------------------

    def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        raise SFTPPermissionDenied("This case area holds files only; folders cannot be created.")

    def rmdir(self, path: bytes) -> None:
        raise SFTPPermissionDenied("The case folder cannot be removed.")

    def readlink(self, path: bytes) -> bytes:
        raise SFTPNoSuchFile("There are no links in the case area.")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise SFTPPermissionDenied("Links and symlinks are not allowed in the case area.")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise SFTPPermissionDenied("Links and symlinks are not allowed in the case area.")

    def statvfs(self, path: bytes) -> SFTPVFSAttrs:
        raise SFTPOpUnsupported("statvfs is not supported.")

    def fstatvfs(self, file_obj: object) -> SFTPVFSAttrs:
        raise SFTPOpUnsupported("fstatvfs is not supported.")

    # helpers -------------------------------------------------------------------------------------

    async def _entry(self, name: str, *, settled: bool = True) -> Entry:
        """The file or upload named ``name``. ``settled``: for answers that report its size (stat, setstat),
        another handle's accepted bytes are made durable first; paths that only need to know what the name
        is (remove, rename, readdir and read refusals) pass False and skip that flush."""
        entry = await self.area.lookup(name)
        if entry is None:
            raise SFTPNoSuchFile(f"No file named {name}.")
        if settled and entry.upload is not None and self.ctx.writers.get(entry.upload.id) is not None:
            # Another handle (maybe of a connection that just dropped) still holds accepted bytes of this
            # upload: make them durable first, so the size a resuming client reads is where it continues.
            await self.ctx.writers.settle(entry.upload.id)
            entry = await self.area.lookup(name) or entry
        return entry

    @staticmethod
    def _write_handle(file_obj: object) -> WriteHandle:
        if not isinstance(file_obj, WriteHandle):
            raise SFTPPermissionDenied("This file was opened for reading only.")
        return file_obj
