"""The S3 writer: cuts the incoming bytes into parts of the upload's multipart upload, several in flight.

The body pipeline hands a writer each block as the chunks it arrived in (:meth:`S3Writer.write_chunks`, a
:class:`~eftgw.storage.base.ChunkWriter`), while another worker thread hashes the block for the file's
digests. One worker thread adds the chunks to the part being filled and updates the part's SHA-256. A part in
memory keeps the chunks themselves (immutable ``bytes``), not a copy, and is sent as those pieces; its
SHA-256, the checksum S3 verifies (see :mod:`eftgw.storage.s3_client`), is ready the moment it is full, so its
upload starts at once while the next part fills. Every part's room is reserved in the node's
:class:`~eftgw.storage.budget.BufferBudget` before it fills and given back once it is stored. A writer keeps
at most ``PER_UPLOAD - part`` bytes in flight (three 16 MiB parts), so one upload holds at most 64 MiB of
memory. Parts larger than ``spool_above`` (64 MiB: files past 109 GiB) are copied into an unlinked temporary
file instead (:func:`~eftgw.storage.budget.spooled`), so memory stays within that bound at every size up to 5
TiB.

:meth:`S3Writer.commit` waits for the parts in flight and PUTs the commit record listing them plus the tail;
until then nothing this writer sent counts. A rollback forgets the uncommitted parts: they stay invisible
inside the multipart upload until a later part with the same number replaces them or the upload completes
or is aborted (S3 drops parts a completion does not list).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mmap
from collections.abc import Sequence
from typing import TYPE_CHECKING

from eftgw.storage.base import StorageError
from eftgw.storage.budget import unmap
from eftgw.storage.s3_client import Body, Buffer
from eftgw.storage.s3_parts import Record, part_size

if TYPE_CHECKING:
    from eftgw.storage.s3 import S3Store

log = logging.getLogger("eftgw.storage.s3")

PER_UPLOAD = 64 * 1024 * 1024  # the memory one upload may hold: the part filling plus the parts in flight
# The body pipeline's block for S3: each block is one worker thread hop (hashing, filling the part), and at
# 1 MiB the hops cost a tenth of the gateway's CPU on a loaded 2-core machine (docs/storage-s3.md).
BLOCK = 2 * 1024 * 1024


def inflight_allowed(part: int) -> int:
    """How many parts of size ``part`` may be stored while the next one fills, within ``PER_UPLOAD``."""
    return max(0, PER_UPLOAD // part - 1)


def held_for(part: int) -> int:
    """The most a writer cutting parts of size ``part`` holds: the part filling plus those in flight."""
    return part * (1 + inflight_allowed(part))


def memory_for(part: int, spool_above: int = PER_UPLOAD) -> int:
    """The memory a writer cutting parts of size ``part`` holds (spooled parts hold none: they are files)."""
    return held_for(part) if part <= spool_above else 0


SPOOLED_INFLIGHT = 1  # spooled parts: one uploads while the next fills (disk, not memory, is what they hold)


def spool_for(part: int, spool_above: int = PER_UPLOAD) -> int:
    """The local disk a writer cutting parts of size ``part`` uses: the part filling and the one in flight."""
    return 0 if part <= spool_above else part * (1 + SPOOLED_INFLIGHT)


class _Part:
    """One part being filled: its number and size, the bytes filled so far and their SHA-256 (UploadPart
    signs it, so S3 checks the bytes it receives against the bytes the client sent)."""

    def __init__(self, number: int, size: int, reserved: int) -> None:
        self.number = number
        self.size = size
        self.filled = 0
        self.sha256 = hashlib.sha256()
        self.reserved = reserved  # budget held for it, given back once it is stored or dropped

    def fill(self, pieces: list[memoryview]) -> list[memoryview]:
        """Take and hash the leading ``pieces`` as far as they fit; return what is left of them.

        Run in a worker thread: each piece is hashed as it is taken (hashlib releases the GIL), so the
        part's checksum is ready the moment it is full.
        """
        while pieces and self.filled < self.size:
            piece = pieces[0]
            take = min(len(piece), self.size - self.filled)
            if take < len(piece):
                pieces[0], piece = piece[take:], piece[:take]
            else:
                pieces.pop(0)
            self.sha256.update(piece)
            self._take(piece)
            self.filled += take
        return pieces

    @property
    def full(self) -> bool:
        return self.filled == self.size

    def _take(self, piece: memoryview) -> None:
        raise NotImplementedError

    def body(self) -> Body:
        raise NotImplementedError

    def content(self) -> Buffer:
        """The bytes filled so far."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the part's bytes."""


class _HeldPart(_Part):
    """A part held in memory as the pieces it was filled with: views of the (immutable) chunks the body
    pipeline handed over, kept until the part is stored and sent as they are, never copied into a part
    buffer. The pipeline gathers tiny chunks before they get here (:data:`eftgw.ingest.SMALL_CHUNK`), so a
    part holds a few pieces per 64 KiB however the client cut its body."""

    def __init__(self, number: int, size: int, reserved: int) -> None:
        super().__init__(number, size, reserved)
        self.pieces: list[memoryview] = []

    def _take(self, piece: memoryview) -> None:
        self.pieces.append(piece)

    def body(self) -> Body:
        return Body(self.pieces)

    def content(self) -> Buffer:
        return b"".join(self.pieces)

    def close(self) -> None:
        self.pieces = []


class _SpooledPart(_Part):
    """A part too large to hold in memory: filled into a :func:`~eftgw.storage.budget.spooled` buffer (an
    unlinked temporary file), and sent from there."""

    def __init__(self, number: int, buffer: mmap.mmap) -> None:
        super().__init__(number, len(buffer), 0)
        self.buffer = buffer
        self.view = memoryview(buffer)

    def _take(self, piece: memoryview) -> None:
        self.view[self.filled : self.filled + len(piece)] = piece

    def body(self) -> Body:
        return Body([self.view])

    def content(self) -> Buffer:
        return self.view[: self.filled]  # not reused: a view is enough

    def close(self) -> None:
        self.view.release()
        unmap(self.buffer)


class S3Writer:
    """Appends to one upload in progress from its committed state ``record`` + ``tail``."""

    block_size = BLOCK  # what the body pipeline gathers per worker thread hop (see ChunkWriter)

    def __init__(self, store: S3Store, key: str, record: Record, tail: Buffer) -> None:
        self._store = store
        self._key = key
        self._committed = record
        self._committed_tail: Buffer | None = tail  # None once a part took it: read again from the record
        self._upload = record.upload
        self._parts = list(record.parts)  # committed parts plus parts stored since, in order
        self._inflight: list[asyncio.Task[tuple[str, int]]] = []  # parts being stored, in order
        self._part: _Part | None = None  # the part filling (holds the tail after a commit)
        self._pending = tail  # committed bytes not yet in a part buffer (copied in with the next write)
        self._dirty = False

    @property
    def _size(self) -> int:
        filling = self._part.filled if self._part is not None else len(self._pending)
        return self._committed.base + sum(s for _e, s in self._parts) + self._inflight_bytes() + filling

    def _inflight_bytes(self) -> int:
        return sum(part_size(self._number(i)) for i in range(len(self._inflight)))

    def _number(self, inflight_index: int) -> int:
        return self._committed.first + len(self._parts) + inflight_index

    async def write(self, data: bytes) -> None:
        await self.write_chunks([data])

    async def write_chunks(self, chunks: Sequence[bytes]) -> None:
        """Append ``chunks`` in order: a worker thread hashes them into the part filling and keeps them
        there (see :meth:`_Part.fill`)."""
        if self._size + sum(len(c) for c in chunks) > self._committed.limit():
            raise StorageError("The upload is larger than S3 can store in one object (5 TiB).")
        # a part keeps views of the chunks until it is stored: a chunk its producer could change is copied
        pieces = [memoryview(c if type(c) is bytes else bytes(c)).cast("B") for c in chunks if len(c)]
        if not pieces:
            return
        self._dirty = True
        while pieces:
            part = self._part if self._part is not None else await self._start_part()
            pieces = await self._fill(part, pieces)
            if part.full:
                await self._cut(part)

    async def _start_part(self) -> _Part:
        """Reserve and take the buffer of the next part; it starts with the committed bytes not in a part."""
        number = self._number(len(self._inflight))
        size = part_size(number)
        if size > self._store.spool_above:  # held in a temporary file: only the block being copied is memory
            part: _Part = _SpooledPart(number, self._store.spool(size))
        else:
            part = _HeldPart(number, size, await self._store.budget.acquire(size))
        self._part = part
        return part

    async def _fill(self, part: _Part, pieces: list[memoryview]) -> list[memoryview]:
        """In a worker thread: :meth:`_Part.fill` (first with the committed bytes not in a part yet); return
        the pieces left over."""
        pending, self._pending = self._pending, b""
        if pending:
            pieces = [memoryview(pending).cast("B"), *pieces]

        def fill() -> list[memoryview]:
            return part.fill(pieces)

        future = asyncio.get_running_loop().run_in_executor(None, fill)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])  # it writes into the part: let it end before anyone closes the part
            raise

    async def _cut(self, part: _Part) -> None:
        """Start storing the full ``part`` and wait until few enough parts are in flight."""
        await self._ensure_upload()
        self._part = None
        self._committed_tail = None  # do not hold it twice; a rollback reads it from the record
        self._inflight.append(asyncio.ensure_future(self._store_part(part)))
        await self._throttle(part.size)

    async def _store_part(self, part: _Part) -> tuple[str, int]:
        try:
            assert self._upload is not None
            stored = await self._store.client.upload_part(
                self._committed.target, self._upload, part.number, part.body(), part.sha256.hexdigest()
            )
            return stored.etag, part.size
        finally:
            self._give_back(part)

    def _give_back(self, part: _Part) -> None:
        part.close()
        if part.reserved:
            self._store.budget.release(part.reserved)

    async def _throttle(self, size: int) -> None:
        """Wait until at most ``PER_UPLOAD // size - 1`` parts are in flight; harvest the finished ones."""
        allowed = SPOOLED_INFLIGHT if size > self._store.spool_above else inflight_allowed(size)
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

    async def _tail(self) -> Buffer:
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
            tail = self._part.content() if self._part is not None else self._pending
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
        self._drop_part()
        tail = await self._tail()
        self._committed_tail = tail
        self._pending = tail
        self._dirty = False

    def _drop_part(self) -> None:
        if self._part is not None:
            self._give_back(self._part)
            self._part = None

    async def close(self) -> None:
        try:
            if self._dirty or self._inflight:
                await self.rollback()
        except Exception:
            log.exception("could not stop the part uploads of %s", self._key)
        finally:
            self._drop_part()
            self._pending = b""
            self._committed_tail = None
