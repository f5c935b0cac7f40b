"""The S3 backend (MinIO, AWS S3, Ceph RGW) for several gateway nodes sharing one regional bucket.

Upload data goes to S3 while it arrives, as parts cut by the fixed schedule of :mod:`eftgw.storage.s3_parts`
(read it for the staging layout). A writer holds the bytes of the part it is filling in memory (8 MiB for
files up to 7.8 GiB, at most one part size) plus at most one part being uploaded; nothing touches the local
disk. :meth:`S3Writer.commit` makes the written bytes durable with one PUT of the commit record, whose body is
the short tail, so an acknowledged byte is always in S3. Any node can continue an upload: the commit record
says everything about the staging data.

Finished uploads are assembled server-side into ``cases/<case>/<file>``: one CopyObject for data that fits
one object copy, otherwise a multipart upload of UploadPartCopy requests, one per staging part (see
:mod:`eftgw.storage.s3_assembly`). The object carries S3 object tags (``case``, ``region``, ``file``,
``sha256``) and the same values as ``x-amz-meta-eftgw-*`` metadata.

Nothing is left behind: deleting staging data deletes the record and every part (every version, when the
bucket is versioned); :meth:`S3Store.sweep_orphans` removes staging data no upload knows and aborts multipart
uploads that a crash left unfinished.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from eftgw.storage.base import ObjectNotFound, StorageError
from eftgw.storage.s3_assembly import Segment, assemble
from eftgw.storage.s3_client import S3Client
from eftgw.storage.s3_parts import (
    CAPACITY,
    PARTS_META,
    part_at,
    part_name,
    part_size,
    part_start,
    staging_of,
)

log = logging.getLogger("eftgw.storage.s3")
READ_BLOCK = 1024 * 1024


class S3Writer:
    """Appends to one staging upload: fills the current part in memory, uploads it when full.

    At most one part upload is in flight while the next part fills, so memory is bounded by two part sizes.
    """

    def __init__(self, store: S3Store, key: str, parts: int, tail: bytes) -> None:
        self._store = store
        self._key = key
        self._parts = parts  # full parts stored, committed or not
        self._committed_parts = parts
        self._buffer = bytearray(tail)  # the bytes after the last full part
        self._committed_tail = len(tail)
        self._dirty = False
        self._inflight: asyncio.Task[None] | None = None

    @property
    def _size(self) -> int:
        return part_start(self._parts) + len(self._buffer)

    async def write(self, data: bytes) -> None:
        if self._size + len(data) > CAPACITY:
            raise StorageError("The upload is larger than S3 can store in one object (5 TiB).")
        self._buffer += data
        self._dirty = True
        while len(self._buffer) >= part_size(self._parts):
            size = part_size(self._parts)
            chunk = bytes(memoryview(self._buffer)[:size])
            del self._buffer[:size]
            await self._settle()
            name = part_name(self._key, self._parts)
            self._inflight = asyncio.ensure_future(self._store.client.put(name, chunk))
            self._parts += 1

    async def _settle(self) -> None:
        """Wait for the part upload in flight; its failure is this writer's failure."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight

    async def commit(self) -> int:
        await self._settle()
        if self._dirty:
            await self._store.put_record(self._key, self._parts, bytes(self._buffer))
            self._committed_parts = self._parts
            self._committed_tail = len(self._buffer)
            self._dirty = False
        return self._size

    async def rollback(self) -> None:
        with contextlib.suppress(Exception):
            await self._settle()
        if not self._dirty:
            return
        uploaded = range(self._committed_parts, self._parts)
        if uploaded:
            await self._store.client.delete([(part_name(self._key, i), None) for i in uploaded])
            self._buffer = bytearray(await self._store.client.get_bytes(self._key, 0, 0))
            if len(self._buffer) != self._committed_tail:
                raise StorageError(f"The commit record of {self._key} changed under its writer.")
            self._parts = self._committed_parts
        else:
            del self._buffer[self._committed_tail :]
        self._dirty = False

    async def close(self) -> None:
        try:
            if self._dirty:
                await self.rollback()
        except Exception:
            log.exception("could not drop uncommitted parts of %s; the orphan sweep will", self._key)
        finally:
            self._buffer = bytearray()


class S3Store:
    """:class:`~eftgw.storage.ObjectStore` over one S3 bucket (created by :meth:`open` if missing)."""

    name = "s3"

    def __init__(self, client: S3Client, *, region: str | None = None) -> None:
        self.client = client
        self.region = region
        self.versioned = False

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
        return cls(client, region=settings.s3_region)

    async def open(self) -> None:
        self.versioned = await self.client.ensure_bucket(self.region)

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)

    # staging ------------------------------------------------------------------------------------------

    async def put_record(self, key: str, parts: int, tail: bytes) -> None:
        """Commit: ``parts`` full parts plus ``tail`` are the staging data of ``key`` (one atomic PUT)."""
        await self.client.put(key, tail, metadata={PARTS_META: str(parts)})

    async def _record(self, key: str) -> tuple[int, int]:
        """(full parts, tail size) of the staging data at ``key``; :class:`ObjectNotFound` if none."""
        size, meta = await self.client.head(key)
        try:
            return int(meta[PARTS_META]), size
        except (KeyError, ValueError) as exc:
            raise StorageError(f"{key} is not eftgw staging data (no commit record).") from exc

    async def create_staging(self, key: str) -> None:
        await self.put_record(key, 0, b"")
        await self._delete_listed(key, only_parts=True)

    async def staging_size(self, key: str) -> int:
        parts, tail = await self._record(key)
        return part_start(parts) + tail

    async def open_writer(self, key: str, offset: int) -> S3Writer:
        parts, tail = await self._record(key)
        committed = part_start(parts) + tail
        if offset > committed:
            raise ValueError(f"offset {offset} beyond stored size {committed}")
        keep_parts = parts if offset >= part_start(parts) else part_at(offset)
        keep = offset - part_start(keep_parts)
        source = key if keep_parts == parts else part_name(key, keep_parts)
        buffer = await self.client.get_bytes(source, 0, keep) if keep else b""
        if offset < committed:  # bytes that were never acknowledged (a crash mid-request): drop them durably
            await self.put_record(key, keep_parts, buffer)
            await self.client.delete([(part_name(key, i), None) for i in range(keep_parts, parts)])
        return S3Writer(self, key, keep_parts, buffer)

    async def _segments(self, key: str) -> tuple[list[Segment], int]:
        parts, tail = await self._record(key)
        segments = [Segment(part_name(key, i), part_start(i), part_size(i)) for i in range(parts)]
        if tail:
            segments.append(Segment(key, part_start(parts), tail))
        return segments, part_start(parts) + tail

    async def read_staging(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        segments, size = await self._segments(key)
        end = size if end is None else min(end, size)
        for segment in segments:
            lo, hi = max(start, segment.offset), min(end, segment.offset + segment.length)
            if lo < hi:
                async for block in self._stream(segment.name, lo - segment.offset, hi - lo):
                    yield block

    async def delete_staging(self, key: str) -> None:
        await self._delete_listed(key, only_parts=False)

    async def _delete_listed(self, key: str, *, only_parts: bool) -> None:
        prefix = key + "/" if only_parts else key
        listed = await self.client.listing(prefix, versions=self.versioned)
        doomed = [(o.name, o.version_id) for o in listed if staging_of(o.name) == key]
        await self.client.delete(doomed)

    # objects ------------------------------------------------------------------------------------------

    async def promote(self, staging: str, key: str, tags: Mapping[str, str]) -> None:
        try:
            segments, _size = await self._segments(staging)
        except ObjectNotFound:
            await self.object_size(key)  # promoted before (ObjectNotFound if not: nothing to promote)
            return
        await assemble(self.client, key, segments, dict(tags))
        await self.delete_staging(staging)

    async def concatenate(self, stagings: list[str], key: str, tags: Mapping[str, str]) -> None:
        segments: list[Segment] = []
        total = 0
        for staging in stagings:
            own, size = await self._segments(staging)
            segments += [Segment(s.name, total + s.offset, s.length, s.start) for s in own]
            total += size
        if total > CAPACITY:
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
        listed = await self.client.listing(key, versions=self.versioned)
        await self.client.delete([(o.name, o.version_id) for o in listed if o.name == key])
        for upload in await self.client.unfinished(key):
            if upload.name == key:
                await self.client.abort_multipart(upload.name, upload.upload_id)

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
        """Delete staging data no upload needs and abort multipart uploads a crash left unfinished.

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
        for staging, modified in sorted(newest.items()):
            if modified < cutoff and not await is_live(staging):
                await self.delete_staging(staging)
                removed.append(staging)
        for upload in await self.client.unfinished(""):
            if upload.initiated is not None and upload.initiated < cutoff:
                await self.client.abort_multipart(upload.name, upload.upload_id)
                removed.append(upload.name)
        if removed:
            log.info("orphan sweep removed %d leftovers: %s", len(removed), ", ".join(removed[:20]))
        return removed


def _release(response: Any) -> None:
    response.close()
    response.release_conn()
