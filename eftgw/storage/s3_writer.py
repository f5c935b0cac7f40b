"""The S3 writer: cuts the incoming bytes into parts of the upload's multipart upload, several in flight.

A writer fills the next part in memory and uploads it as soon as it is full, while the following part fills.
It reserves each part's room in the node's :class:`~eftgw.storage.budget.BufferBudget` before filling it and
returns it once the part is stored, and it keeps at most ``PER_UPLOAD - part`` bytes in flight (three 16 MiB
parts), so one upload holds at most 64 MiB while its parts are 64 MiB or smaller (files up to 109 GiB).
Every part carries ``Content-MD5`` (see :mod:`eftgw.storage.s3_client`), so S3 refuses a damaged part.

:meth:`S3Writer.commit` waits for the parts in flight and PUTs the commit record listing them plus the tail;
until then nothing this writer sent counts. A rollback forgets the uncommitted parts: they stay invisible
inside the multipart upload until a later part with the same number replaces them or the upload completes
or is aborted (S3 drops parts a completion does not list).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from eftgw.storage.base import StorageError
from eftgw.storage.s3_parts import Record, part_size

if TYPE_CHECKING:
    from eftgw.storage.s3 import S3Store

log = logging.getLogger("eftgw.storage.s3")

PER_UPLOAD = 64 * 1024 * 1024  # the memory one upload may hold: the part filling plus the parts in flight


def inflight_allowed(part: int) -> int:
    """How many parts of size ``part`` may be stored while the next one fills, within ``PER_UPLOAD``."""
    return max(0, PER_UPLOAD // part - 1)


def held_for(part: int) -> int:
    """The most a writer cutting parts of size ``part`` holds: the part filling plus those in flight."""
    return part * (1 + inflight_allowed(part))


class S3Writer:
    """Appends to one upload in progress from its committed state ``record`` + ``tail``."""

    def __init__(self, store: S3Store, key: str, record: Record, tail: bytes) -> None:
        self._store = store
        self._key = key
        self._committed = record
        self._committed_tail: bytes | None = tail  # None once a part took it: read again from the record
        self._upload = record.upload
        self._parts = list(record.parts)  # committed parts plus parts stored since, in order
        self._inflight: list[asyncio.Task[tuple[str, int]]] = []  # parts being stored, in order
        self._blocks: list[bytes] = [tail] if tail else []
        self._filled = len(tail)  # bytes after the last part cut
        self._reserved = 0  # budget held for the part filling
        self._dirty = False

    @property
    def _size(self) -> int:
        return self._committed.base + sum(s for _e, s in self._parts) + self._inflight_bytes() + self._filled

    def _inflight_bytes(self) -> int:
        return sum(part_size(self._number(i)) for i in range(len(self._inflight)))

    def _number(self, inflight_index: int) -> int:
        return self._committed.first + len(self._parts) + inflight_index

    async def write(self, data: bytes) -> None:
        if self._size + len(data) > self._committed.limit():
            raise StorageError("The upload is larger than S3 can store in one object (5 TiB).")
        if not data:
            return
        self._dirty = True
        if not self._reserved:
            self._reserved = await self._store.budget.acquire(part_size(self._number(len(self._inflight))))
        self._blocks.append(data)
        self._filled += len(data)
        while self._filled >= (size := part_size(self._number(len(self._inflight)))):
            body = self._blocks[0] if len(self._blocks) == 1 else b"".join(self._blocks)
            await self._ensure_upload()
            chunk, rest = body[:size], body[size:]
            number = self._number(len(self._inflight))
            reserved, self._reserved = self._reserved, 0
            self._inflight.append(asyncio.ensure_future(self._store_part(number, chunk, reserved)))
            self._blocks = [rest] if rest else []
            self._filled = len(rest)
            self._committed_tail = None  # do not hold it twice; a rollback reads it from the record
            del body, chunk
            await self._throttle(size)
            if self._filled:
                following = part_size(self._number(len(self._inflight)))
                self._reserved = await self._store.budget.acquire(following)

    async def _store_part(self, number: int, chunk: bytes, reserved: int) -> tuple[str, int]:
        try:
            assert self._upload is not None
            part = await self._store.client.upload_part(self._committed.target, self._upload, number, chunk)
            return part.etag, len(chunk)
        finally:
            self._store.budget.release(reserved)

    async def _throttle(self, size: int) -> None:
        """Wait until at most ``PER_UPLOAD // size - 1`` parts are in flight; harvest the finished ones."""
        allowed = inflight_allowed(size)
        while True:
            while self._inflight and self._inflight[0].done():
                self._parts.append(self._inflight.pop(0).result())  # a failed part raises here
            running = [t for t in self._inflight if not t.done()]
            if len(running) <= allowed:
                return
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in running:
                if task.done() and task.exception() is not None:
                    task.result()

    async def _ensure_upload(self) -> None:
        """Start the multipart upload before its first part, and record it at once (for the orphan sweep)."""
        if self._upload is not None:
            return
        upload = await self._store.client.create_multipart(self._committed.target, {}, {})
        recorded = Record(self._committed.target, self._committed.base, upload, list(self._committed.parts))
        await self._store.put_record(self._key, recorded, await self._tail())
        self._committed = recorded
        self._upload = upload

    async def _tail(self) -> bytes:
        """The committed tail (from memory, or read back from the commit record)."""
        if self._committed_tail is not None:
            return self._committed_tail
        record, tail = await self._store.load(self._key)
        if record.upload != self._committed.upload or record.parts != self._committed.parts:
            raise StorageError(f"The commit record of {self._key} changed under its writer.")
        return tail

    async def _drain(self) -> None:
        """Wait for every part in flight; the first failure is raised after all have ended."""
        inflight, self._inflight = self._inflight, []
        results = await asyncio.gather(*inflight, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            self._inflight = []
            raise failures[0]
        self._parts += [r for r in results if not isinstance(r, BaseException)]

    async def commit(self) -> int:
        await self._drain()
        if self._dirty:
            tail = b"".join(self._blocks)
            self._blocks = [tail] if tail else []
            record = Record(self._committed.target, self._committed.base, self._upload, list(self._parts))
            await self._store.put_record(self._key, record, tail)
            self._committed, self._committed_tail = record, tail
            self._dirty = False
        return self._size

    async def rollback(self) -> None:
        # Parts in flight are let land, not cancelled: a cancelled task would leave its request running in
        # a worker thread, and it could then replace a part the next writer of this upload stored.
        inflight, self._inflight = self._inflight, []
        await asyncio.shield(asyncio.gather(*inflight, return_exceptions=True))
        self._parts = list(self._committed.parts)
        tail = await self._tail()
        self._committed_tail = tail
        self._blocks = [tail] if tail else []
        self._filled = len(tail)
        self._dirty = False

    async def close(self) -> None:
        try:
            if self._dirty or self._inflight:
                await self.rollback()
        except Exception:
            log.exception("could not stop the part uploads of %s", self._key)
        finally:
            self._blocks = []
            self._committed_tail = None
            if self._reserved:
                self._store.budget.release(self._reserved)
                self._reserved = 0
