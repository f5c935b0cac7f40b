"""The case area: what an SFTP customer sees of their case, as one flat directory.

It lists the case's completed files (from :class:`FileService`, both the customer's and those engineers
placed) and the uploads in progress that came over SFTP (from :class:`UploadService`, each with its durable
size). Names are unique in the view:

- an upload in progress hides a completed file of the same name (it is what the client is writing, and what a
  resuming client must find with ``stat``); of several, the newest;
- of several completed files with one name, the newest (by upload time) is shown. SFTP keeps one file per
  name (an upload finishing deletes the customer's older files of its name, a rename takes them along), so
  several arise only from other transports or engineers' files.

Files placed by engineers are read-only here; the customer's own files can be renamed, removed and
re-uploaded (replacing them) while the case is open, and those of the same account continued.
"""

from __future__ import annotations

import datetime as dt
import stat
from dataclasses import dataclass

from asyncssh import SFTPAttrs

from eftgw.files import FileService
from eftgw.model import FileRecord, Principal, Transport, Upload
from eftgw.uploads import UploadService

CUSTOMER_UID = 1000
ENGINEER_UID = 1001
CASE_GID = 1000
OWNERS = {CUSTOMER_UID: "customer", ENGINEER_UID: "engineer"}


@dataclass
class Entry:
    """One name in the case area: a completed file or an upload in progress."""

    name: str
    record: FileRecord | None = None
    upload: Upload | None = None

    @property
    def in_progress(self) -> bool:
        return self.upload is not None

    @property
    def size(self) -> int:
        if self.upload is not None:
            return self.upload.offset
        return self.record.size if self.record is not None else 0

    @property
    def from_engineer(self) -> bool:
        return self.record is not None and self.record.source == "engineer"

    @property
    def mtime(self) -> dt.datetime:
        if self.upload is not None:
            return self.upload.updated_at
        if self.record is not None:
            return self.record.modified_at or self.record.uploaded_at
        return dt.datetime.now(dt.UTC)

    def attrs(self) -> SFTPAttrs:
        """Regular-file attributes; the size of an upload in progress is its durable size."""
        mode = 0o444 if self.from_engineer else 0o644
        mtime = int(self.mtime.timestamp())
        return SFTPAttrs(
            type=1,  # FILEXFER_TYPE_REGULAR
            size=self.size,
            uid=ENGINEER_UID if self.from_engineer else CUSTOMER_UID,
            gid=CASE_GID,
            permissions=stat.S_IFREG | mode,
            nlink=1,
            atime=mtime,
            mtime=mtime,
        )


def root_attrs(opened_at: dt.datetime) -> SFTPAttrs:
    stamp = int(opened_at.timestamp())
    return SFTPAttrs(
        type=2,  # FILEXFER_TYPE_DIRECTORY
        size=0,
        uid=CUSTOMER_UID,
        gid=CASE_GID,
        permissions=stat.S_IFDIR | 0o755,
        nlink=1,
        atime=stamp,
        mtime=stamp,
    )


class CaseArea:
    """The view of one case for one SFTP principal; every call reads the current state."""

    def __init__(
        self, uploads: UploadService, files: FileService, principal: Principal, case_id: str
    ) -> None:
        self.uploads = uploads
        self.files = files
        self.principal = principal
        self.case_id = case_id

    async def entries(self) -> dict[str, Entry]:
        """Every visible name, in the order a listing shows them (by name)."""
        shown: dict[str, Entry] = {}
        for record in await self.files.list(self.principal, self.case_id):
            current = shown.get(record.name)
            if current is None or _newer_file(record, current.record):
                shown[record.name] = Entry(record.name, record=record)
        for upload in await self._uploads():
            current = shown.get(upload.name)
            if current is None or current.upload is None or upload.created_at >= current.upload.created_at:
                shown[upload.name] = Entry(upload.name, upload=upload)
        return dict(sorted(shown.items()))

    async def lookup(self, name: str) -> Entry | None:
        """The entry a name shows, or ``None``: two indexed queries by name, whatever the case holds."""
        uploads = await self.uploads_named(name)
        if uploads:
            return Entry(name, upload=max(uploads, key=lambda u: (u.created_at, u.id)))
        shown: FileRecord | None = None
        for record in await self.versions(name):
            if _newer_file(record, shown):
                shown = record
        return Entry(name, record=shown) if shown is not None else None

    async def versions(self, name: str) -> list[FileRecord]:
        """Every completed file of the case with this name (the shown one and those it hides)."""
        return await self.files.named(self.principal, self.case_id, name)

    async def uploads_named(self, name: str) -> list[Upload]:
        """The uploads in progress over SFTP with this name."""
        return await self.uploads.active_named(self.principal, self.case_id, name, Transport.SFTP)

    async def _uploads(self) -> list[Upload]:
        return [
            u for u in await self.uploads.list_active(self.principal, self.case_id) if u.via == Transport.SFTP
        ]


def _newer_file(record: FileRecord, other: FileRecord | None) -> bool:
    if other is None:
        return True
    return (record.uploaded_at, record.id) > (other.uploaded_at, other.id)
