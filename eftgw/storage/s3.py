"""The S3 backend (MinIO, AWS S3, Ceph RGW) for several gateway nodes sharing one regional bucket.

An upload's bytes go to S3 once: as parts of a multipart upload for the file's final key, started when the
first full part is ready (see :mod:`eftgw.storage.s3_parts` for the layout and :mod:`eftgw.storage.s3_writer`
for the writer). Finishing is a CompleteMultipartUpload listing the committed parts plus the tail as the last
part, then a PutObjectTagging with ``case``, ``region``, ``file`` and ``sha256`` (metadata only; the SHA-256
is known only at the end). A file smaller than one part never starts a multipart upload: it is one PUT.

Safety: an acknowledged byte is in a committed part or in the tail of the commit record, so it survives
``kill -9``; any node can continue an upload from the record. Deleting staging data aborts its multipart
upload (S3 drops every part) and deletes the record and any sealed prefix; the orphan sweep aborts
multipart uploads that no commit record lists.

Reading staging data back needs the bytes of parts S3 will not serve before completion, so the store first
*seals* them: the multipart upload is completed into the target key and its parts become the ``base``; a
later completion copies the base back server-side (UploadPartCopy). Only these paths copy: reading back
(a node rebuilding digests, a truncate inside the parts), a promotion to another key than the target, and
tus concatenation (:mod:`eftgw.storage.s3_assembly`). Read-backs must run under the upload's lock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import mmap
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from minio.datatypes import Part

from eftgw.memory import HTTP, writer_share
from eftgw.storage.base import ObjectNotFound, StorageError
from eftgw.storage.budget import BufferBudget, spooled
from eftgw.storage.s3_assembly import Segment, assemble
from eftgw.storage.s3_client import Body, Buffer, S3Client, require_tested_minio
from eftgw.storage.s3_parts import (
    BASE_PART,
    DATA_SUFFIX,
    MAX_OBJECT,
    MAX_PARTS,
    SIZE_META,
    UPLOAD_META,
    Record,
    copy_ranges,
    staging_of,
)
from eftgw.storage.s3_writer import S3Writer, block_for

log = logging.getLogger("eftgw.storage.s3")
READ_BLOCK = 1024 * 1024
DEFAULT_BUDGET = 512 * 1024 * 1024


class S3Store:
    """:class:`~eftgw.storage.ObjectStore` over one S3 bucket (created by :meth:`open` if missing)."""

    name = "s3"

    def __init__(
        self,
        client: S3Client,
        *,
        region: str | None = None,
        budget: BufferBudget | None = None,
        writer_memory: int | None = None,
        spool_dir: Path | None = None,
    ):
        self.client = client
        self.region = region
        self.versioned = False
        self.budget = budget or BufferBudget(DEFAULT_BUDGET)
        # What one writer may keep in memory: its upload's share (eftgw.memory), by transport, unless set for
        # all (tests); larger parts and tails go to a temporary file.
        self._writer_memory = writer_memory
        self.spool_dir = spool_dir  # where (None: the system's temporary directory)

    @property
    def writer_memory(self) -> int:
        """What a writer of an HTTPS upload may keep in memory (53.25 MiB)."""
        return self.writer_memory_for(HTTP)

    def writer_memory_for(self, via: str) -> int:
        """What a writer of an upload over ``via`` may keep in memory: the share
        :func:`eftgw.memory.writer_share` gives it with S3's blocks (53.25 MiB for HTTPS, 33 MiB less
        2 KiB for SFTP), or the amount the store was made with."""
        if self._writer_memory is not None:
            return self._writer_memory
        return writer_share(block_for(via), via)

    def spool(self, size: int) -> mmap.mmap:
        """A buffer of ``size`` bytes in an unlinked temporary file (see budget.spooled)."""
        return spooled(size, self.spool_dir)

    @classmethod
    def from_settings(cls, settings: Any) -> S3Store:
        """Build from :class:`eftgw.config.Settings` (``s3_endpoint``, keys, bucket, ``s3_secure``)."""
        endpoint = settings.s3_endpoint
        if not endpoint:
            raise StorageError("EFTGW_STORAGE is s3 but EFTGW_S3_ENDPOINT is not set.")
        secure = bool(settings.s3_secure)
        if "://" in endpoint:
            scheme, endpoint = endpoint.split("://", 1)
            secure = scheme == "https"
        access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else None
        secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
        client = S3Client(
            endpoint.rstrip("/"), access, secret, settings.s3_bucket, secure=secure, region=settings.s3_region
        )
        budget = BufferBudget(int(getattr(settings, "upload_memory", DEFAULT_BUDGET)))
        spool_dir = Path(settings.resolved_data_dir) / "spool"
        return cls(client, region=settings.s3_region, budget=budget, spool_dir=spool_dir)

    async def open(self) -> None:
        require_tested_minio()
        self.versioned = await self.client.ensure_bucket(self.region)

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)
        self.budget.drop_idle()  # the part buffers no writer uses

    # the commit record --------------------------------------------------------------------------------

    async def put_record(self, key: str, record: Record, tail: Buffer | Sequence[Buffer]) -> None:
        """Commit: ``record`` plus ``tail`` are the staging data of ``key`` (one atomic PUT).

        The tail (one buffer, or the pieces a part in memory keeps) is sent as it is, from memory or from a
        spooled part, never joined with the record."""
        pieces = [tail] if isinstance(tail, bytes | memoryview) else list(tail)
        size = record.parts_end + sum(len(piece) for piece in pieces)
        meta = {SIZE_META: str(size), UPLOAD_META: record.upload or ""}
        await self.client.put(key, Body([record.encode(b""), *pieces]), metadata=meta)

    async def load(self, key: str, memory: int | None = None) -> tuple[Record, Buffer]:
        """The committed record and tail of ``key``; finishes a seal a crash interrupted.

        A tail longer than ``memory`` (by default ``writer_memory``) is read into a spooled buffer, not into
        memory."""
        line, tail = await self.client.get_line_and_rest(key, memory or self.writer_memory, self.spool)
        try:
            record, _rest = Record.decode(line + b"\n")
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"{key} is not eftgw staging data (no commit record).") from exc
        if record.sealing:
            record = await self._finish_seal(key, record, tail)
        return record, tail

    # staging ------------------------------------------------------------------------------------------

    async def create_staging(self, key: str, target: str | None = None) -> None:
        """Create empty staging data at ``key`` whose multipart upload will complete into ``target``."""
        await self.delete_staging(key)
        await self.put_record(key, Record(target or key + DATA_SUFFIX), b"")

    async def staging_size(self, key: str) -> int:
        _size, meta = await self.client.head(key)
        try:
            return int(meta[SIZE_META])
        except (KeyError, ValueError) as exc:
            raise StorageError(f"{key} is not eftgw staging data (no commit record).") from exc

    async def open_writer(self, key: str, offset: int, via: str = HTTP) -> S3Writer:
        memory = self.writer_memory_for(via)
        record, tail = await self.load(key, memory)
        committed = record.parts_end + len(tail)
        if offset > committed:
            raise ValueError(f"offset {offset} beyond stored size {committed}")
        if offset < committed:  # bytes that were never acknowledged, or a truncate: drop them durably
            record, tail = await self._cut(key, record, tail, offset)
        return S3Writer(self, key, record, tail, memory, block_for(via))

    async def _cut(self, key: str, record: Record, tail: Buffer, offset: int) -> tuple[Record, Buffer]:
        if offset < record.parts_end:
            record = await self._seal(key, record, tail)
            base = offset - offset % BASE_PART  # 0 or at least 16 MiB: a valid first run of copied parts
            tail = await self.client.get_bytes(record.target, base, offset - base) if offset > base else b""
            record = Record(record.target, base, record.upload)
        else:
            tail = tail[: offset - record.parts_end]
        await self.put_record(key, record, tail)
        return record, tail

    async def _seal(self, key: str, record: Record, tail: Buffer) -> Record:
        """Complete the committed parts into the target object so they can be read (they become the base)."""
        if not record.parts:
            return record
        record.sealing = True
        await self.put_record(key, record, tail)
        return await self._finish_seal(key, record, tail)

    async def _finish_seal(self, key: str, record: Record, tail: Buffer) -> Record:
        size = record.parts_end
        if record.upload is not None and record.parts:
            await self._complete(record, size, b"", seal=True)
        sealed = Record(record.target, size)
        await self.put_record(key, sealed, tail)
        return sealed

    async def _complete(self, record: Record, size: int, tail: Buffer, *, seal: bool = False) -> bool:
        """Complete the record's multipart upload: the base copied back, its parts, then ``tail``.

        Ceph RGW 16 completes an upload only if every part stored in it is listed, and parts of abandoned
        writes (a rollback, a writer that died) may follow the committed ones. A seal lists them too (they
        end up after the committed bytes, where nothing reads them); a promotion returns ``False`` without
        completing, so that the caller seals first. A promotion first tries to complete without listing the
        parts (one round trip less at the end of every upload): RGW refuses that (``InvalidPart``) while
        such parts are stored and leaves the upload as it was; AWS S3 and MinIO drop them. Idempotent: if
        the upload is gone because an earlier attempt completed it, the target must hold ``size`` bytes (at
        least ``size`` for a seal).
        """
        assert record.upload is not None
        target, upload = record.target, record.upload
        try:
            if not seal:
                try:
                    await self._send_completion(record, tail, [])
                    return True
                except StorageError as exc:  # refused, or failed: see which parts are stored
                    log.debug("completing %s at once failed (%s); listing its parts", target, exc)
            stored = await self.client.list_parts(target, upload)
        except ObjectNotFound as exc:
            found = await self._size_or_none(target)
            if found is None or found < size or (found != size and not seal):
                raise StorageError(f"The multipart upload of {target} is gone before completion.") from exc
            return True
        last = record.first + len(record.parts) - 1
        leftovers = [Part(p.part_number, p.etag) for p in stored if p.part_number > last]
        if not seal and any(p.part_number < MAX_PARTS for p in leftovers):
            return False  # (a tail stored by an earlier attempt is replaced below)
        await self._send_completion(record, tail, leftovers)
        return True

    async def _send_completion(self, record: Record, tail: Buffer, leftovers: list[Part]) -> None:
        """Copy the base back, upload ``tail`` as the last part, and complete the upload with the base, the
        committed parts and the tail (or, without a tail, ``leftovers``)."""
        assert record.upload is not None
        target, upload = record.target, record.upload
        copies = await asyncio.gather(
            *(
                self.client.upload_part_copy(target, upload, n, target, start, length)
                for n, (start, length) in enumerate(copy_ranges(record.base), start=1)
            )
        )
        parts = [Part(record.first + i, etag) for i, (etag, _size) in enumerate(record.parts)]
        if tail:  # always the last number: a retry replaces it, and no writer's part ever has it
            leftovers = [await self.client.upload_part(target, upload, MAX_PARTS, Body([tail]))]
        await self.client.complete_multipart(target, upload, [*copies, *parts, *leftovers])

    async def _size_or_none(self, key: str) -> int | None:
        try:
            return await self.object_size(key)
        except ObjectNotFound:
            return None

    async def read_staging(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        record, tail = await self.load(key)
        size = record.parts_end + len(tail)
        end = size if end is None else min(end, size)
        if start < min(end, record.parts_end) and record.parts:
            record = await self._seal(key, record, tail)
        if start < min(end, record.base):
            async for block in self._stream(record.target, start, min(end, record.base) - start):
                yield block
        for at in range(max(start, record.parts_end), end, READ_BLOCK):
            yield bytes(tail[at - record.parts_end : min(end, at + READ_BLOCK) - record.parts_end])

    async def delete_staging(self, key: str) -> None:
        record = await self._record_or_none(key)
        if record is not None:
            if record.upload is not None:
                await self.client.abort_multipart(record.target, record.upload)
            if (record.base or record.sealing) and staging_of(record.target) != key:
                await self._delete_versions(record.target)  # a sealed prefix, never a finished file
        listed = await self.client.listing(key, versions=self.versioned)
        await self.client.delete([(o.name, o.version_id) for o in listed if staging_of(o.name) == key])

    async def _record_or_none(self, key: str) -> Record | None:
        """The record at ``key`` as stored (even mid-seal); ``None`` if there is none or it is not one."""
        try:
            body = await self.client.get_bytes(key, 0, 0)
        except ObjectNotFound:
            return None
        try:
            return Record.decode(body)[0]
        except (ValueError, KeyError, TypeError):
            return None

    async def _delete_versions(self, name: str) -> None:
        """Delete the object ``name``: every version of it on a versioned bucket; missing is not an error."""
        if not self.versioned:
            await self.client.delete([(name, None)])  # no listing first: one round trip
            return
        listed = await self.client.listing(name, versions=True)
        await self.client.delete([(o.name, o.version_id) for o in listed if o.name == name])

    # objects ------------------------------------------------------------------------------------------

    async def promote(self, staging: str, key: str, tags: Mapping[str, str]) -> None:
        try:
            record, tail = await self.load(staging)
        except ObjectNotFound:
            await self.object_size(key)  # promoted before (ObjectNotFound if not: nothing to promote)
            # the record may have gone before the tags were set (they are set while it is deleted)
            await self.client.set_tags(key, dict(tags))
            return
        if record.target != key:  # staging made without this target: assemble a copy, then forget it
            await self.concatenate([staging], key, tags)
            await self.delete_staging(staging)
            return
        size = record.parts_end + len(tail)
        if record.base == 0 and not record.parts:
            await self.client.put(key, Body([tail]), tags=dict(tags))  # smaller than one part: one PUT
            if record.upload is not None:
                await self.client.abort_multipart(key, record.upload)
        elif record.upload is None and not tail and await self._size_or_none(key) == size:
            pass  # everything is the sealed base: the target already is the file
        else:
            if record.upload is None or not await self._complete(record, size, tail):
                record = await self._seal(staging, record, tail)  # nothing to seal without an upload
                record.upload = await self.client.create_multipart(key, {}, {})
                await self.put_record(staging, record, tail)
                await self._complete(record, size, tail)
        # The tags (RGW 16 ignores x-amz-tagging on multipart uploads) are set while the record is deleted:
        # one round trip, not two (three with the listing a versioned bucket needs). A promotion run again
        # after a crash between the two finds the file in place and sets the tags then (above).
        await asyncio.gather(self.client.set_tags(key, dict(tags)), self._delete_versions(staging))

    async def concatenate(self, stagings: list[str], key: str, tags: Mapping[str, str]) -> None:
        segments: list[Segment] = []
        total = 0
        for staging in stagings:
            record, tail = await self.load(staging)
            record = await self._seal(staging, record, tail)
            if record.base:
                segments.append(Segment(record.target, total, record.base))
            if tail:
                header = len(record.encode(b""))
                segments.append(Segment(staging, total + record.base, len(tail), header))
            total += record.base + len(tail)
        if total > MAX_OBJECT:
            raise StorageError("The concatenated upload is larger than S3 can store in one object (5 TiB).")
        await assemble(self.client, key, segments, dict(tags))

    async def object_size(self, key: str) -> int:
        size, _meta = await self.client.head(key)
        return size

    async def read_object(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        if end is None:
            end = await self.object_size(key)
        if end <= start:
            await self.object_size(key)  # ObjectNotFound for a missing key, even for an empty range
            return
        async for block in self._stream(key, start, end - start):
            yield block

    async def _stream(self, name: str, start: int, length: int) -> AsyncIterator[bytes]:
        response = await self.client.run(f"GET {name}", self.client.open_range, name, start, length)
        received = 0
        try:
            while received < length:
                block = await self.client.run(
                    f"GET {name}", response.read, min(READ_BLOCK, length - received)
                )
                if not block:
                    break
                received += len(block)
                yield bytes(block)
        finally:
            await asyncio.to_thread(_release, response)
        if received != length:
            raise StorageError(f"S3 returned {received} bytes of {name}, expected {length}.")

    async def object_tags(self, key: str) -> dict[str, str]:
        return await self.client.tags(key)

    async def delete_object(self, key: str) -> None:
        await self._delete_versions(key)
        for upload in await self.client.unfinished(key):
            if upload.name == key:
                await self.client.abort_multipart(upload.name, upload.upload_id)

    async def delete_objects(self, keys: Sequence[str]) -> None:
        for key in keys:  # every version of each: a listing per key, as delete_object does
            await self.delete_object(key)

    async def list_keys(self, prefix: str) -> list[str]:
        names = {o.name for o in await self.client.listing(prefix, versions=self.versioned)}
        names |= {u.name for u in await self.client.unfinished(prefix)}
        return sorted(names)

    # leftovers ----------------------------------------------------------------------------------------

    async def sweep_orphans(
        self,
        is_live: Callable[[str], Awaitable[bool]],
        *,
        now: dt.datetime,
        grace: dt.timedelta = dt.timedelta(hours=1),
    ) -> list[str]:
        """Delete staging data no upload needs and abort multipart uploads no commit record lists.

        ``is_live(staging_key)`` says whether an upload still needs that staging data. Only things untouched
        for ``grace`` are considered, so an upload being created (staging first, then its row) or a promotion
        in progress is never disturbed. Returns the keys removed.
        """
        cutoff = now - grace
        newest: dict[str, dt.datetime] = {}
        for listed in await self.client.listing("uploads/", versions=self.versioned):
            staging = staging_of(listed.name)
            modified = listed.modified or now
            if staging not in newest or modified > newest[staging]:
                newest[staging] = modified
        removed: list[str] = []
        recorded: set[str] = set()
        for staging, modified in sorted(newest.items()):
            if modified < cutoff and not await is_live(staging):
                await self.delete_staging(staging)
                removed.append(staging)
                continue
            try:
                _size, meta = await self.client.head(staging)
            except ObjectNotFound:
                continue
            if meta.get(UPLOAD_META):
                recorded.add(meta[UPLOAD_META])
        for upload in await self.client.unfinished(""):
            stale = upload.initiated is not None and upload.initiated < cutoff
            if stale and upload.upload_id not in recorded:
                await self.client.abort_multipart(upload.name, upload.upload_id)
                removed.append(upload.name)
        if removed:
            log.info("orphan sweep removed %d leftovers: %s", len(removed), ", ".join(removed[:20]))
        return removed


def _release(response: Any) -> None:
    response.close()
    response.release_conn()
