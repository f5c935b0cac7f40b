"""The S3 writer: cuts the incoming bytes into parts of the upload's multipart upload, several in flight.

The body pipeline hands a writer each block (:meth:`S3Writer.write_chunks`, a
:class:`~eftgw.storage.base.ChunkWriter`; 4 MiB over HTTPS, 2 MiB over SFTP, :func:`block_for`; a block
received in place arrives whole, as the pipeline's reused buffer) with its hashing for the file's digests
(:meth:`S3Writer.write_chunks_along`). One worker thread hop per block runs that hashing, then copies the
chunks into the part being filled and updates the part's SHA-256. A part in memory is a buffer of 256 KiB
segments (``SEGMENT``) from the node's pool (:meth:`~eftgw.storage.budget.BufferBudget.take_segments`): the
segments earlier parts gave back, whose pages are already mapped, so the one copy of each byte neither faults
nor allocates. The writer is done with the chunks when ``write_chunks`` returns (``copies_chunks``). A part is
sent as views of its segments; its SHA-256, the checksum S3 verifies (see :mod:`eftgw.storage.s3_client`), is
ready the moment it is full, so its upload starts at once while the next part fills. The segments go back to
the pool once the part is stored or dropped, and only once no worker thread sends them any more (a cancelled
upload's thread is waited for, :meth:`S3Writer._store_part`).

**Memory.** An upload holds at most ``PER_UPLOAD`` (64 MiB, :mod:`eftgw.memory`): the writer's share is what
the transport's buffers and the pipeline's two blocks leave, chosen per upload from its transport
(:meth:`~eftgw.storage.s3.S3Store.writer_memory_for`): ``WRITER_MEMORY``, 53.25 MiB, for HTTPS (two 4 MiB
blocks); 33 MiB less 2 KiB for SFTP (two 2 MiB blocks), whose session and write buffer hold more in front. The
rule is segment-granular: the segments of the parts in flight plus the segments of the part filling stay
within the share; a part takes segments as its bytes need them. When a block does not fit, the part takes what
its segments hold, the writer waits until a part in flight is stored, then goes on. Over HTTPS, with 16 MiB
parts three upload while the fourth fills its first 5.25 MiB; with 32 MiB parts one uploads while the next
fills 21.25 MiB. Over SFTP, with 16 MiB parts two upload while the third fills its first 768 KiB (three
segments of the 1 MiB less 2 KiB left); with 32 MiB parts one uploads while the next fills the same. Parts
larger than the share (64 MiB and up: files past 46.9 GiB) are copied into an unlinked temporary file instead
(:func:`~eftgw.storage.budget.spooled`), one uploading while the next fills, so memory stays within that bound
at every size up to 5 TiB. Every part in memory also reserves its whole size in the node's
:class:`~eftgw.storage.budget.BufferBudget` before it fills and gives it back, with its segments, once it is
stored. The pool keeps the segments given back for the next parts, within the budget (segments idle plus
segments in parts never exceed it).

:meth:`S3Writer.commit` waits for the parts in flight and PUTs the commit record listing them plus the tail
(the part filling, sent as views of its segments, not joined); until then nothing this writer sent counts.
A rollback forgets the uncommitted parts: they stay invisible inside the multipart upload until a later part
with the same number replaces them or the upload completes or is aborted (S3 drops parts a completion does
not list). A committed tail still in the part filling is copied out before a rollback gives that part back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mmap
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from eftgw.memory import SFTP, writer_share
from eftgw.storage.base import StorageError
from eftgw.storage.budget import SEGMENT, unmap
from eftgw.storage.s3_client import Body, Buffer
from eftgw.storage.s3_parts import Record, part_size

if TYPE_CHECKING:
    from eftgw.storage.s3 import S3Store

log = logging.getLogger("eftgw.storage.s3")

# The body pipeline's block for S3, by the upload's transport. Each block costs worker thread hops (the
# file's hashing, filling the part) and the event loop's Python around them, so the larger the block the less
# CPU per GiB (docs/storage-s3.md): at 1 MiB the hops cost a tenth of the gateway's CPU on a loaded 2-core
# machine, and 4 MiB over HTTPS takes 0.1-0.3 CPU s/GiB less than 2 MiB; 8 MiB would leave two 16 MiB parts
# in flight instead of three and was slower. SFTP keeps 2 MiB: its share is smaller (its session holds more
# in front), and two more MiB per block would leave one 16 MiB part in flight instead of two.
BLOCK = 4 * 1024 * 1024
SFTP_BLOCK = 2 * 1024 * 1024
WRITER_MEMORY = writer_share(BLOCK)  # what an HTTPS upload's writer may hold: parts in flight and the filling


def block_for(via: str) -> int:
    """The body pipeline's block for an upload over transport ``via``."""
    return SFTP_BLOCK if via == SFTP else BLOCK


SPOOLED_INFLIGHT = 1  # spooled parts: one uploads while the next fills (disk, not memory, is what they hold)


def spooled_part(part: int, writer_memory: int = WRITER_MEMORY) -> bool:
    """Whether parts of size ``part`` are too large for a writer's memory and go to a temporary file."""
    return part > writer_memory


def memory_for(part: int, writer_memory: int = WRITER_MEMORY) -> int:
    """The most memory a writer cutting parts of size ``part`` holds: its share (spooled parts hold none)."""
    return 0 if spooled_part(part, writer_memory) else writer_memory


def inflight_for(part: int, writer_memory: int = WRITER_MEMORY) -> int:
    """How many parts of size ``part`` may be uploading while the next one has begun to fill (it has at
    least one segment)."""
    return SPOOLED_INFLIGHT if spooled_part(part, writer_memory) else (writer_memory - SEGMENT) // part


def spool_for(part: int, writer_memory: int = WRITER_MEMORY) -> int:
    """The local disk a writer cutting parts of size ``part`` uses: the part filling and the one in flight."""
    return part * (1 + SPOOLED_INFLIGHT) if spooled_part(part, writer_memory) else 0


class _Part:
    """One part being filled: its number and size, the bytes filled so far and their SHA-256 (UploadPart
    signs it, so S3 checks the bytes it receives against the bytes the client sent), and the memory it keeps
    (``kept``: its segments for a part in memory until it is stored, none for a spooled one)."""

    def __init__(self, number: int, size: int, reserved: int) -> None:
        self.number = number
        self.size = size
        self.filled = 0
        self.kept = 0
        self.sha256 = hashlib.sha256()
        self.reserved = reserved  # budget held for it, given back once it is stored or dropped

    def fill(self, pieces: list[memoryview], room: int) -> list[memoryview]:
        """Copy and hash the leading ``pieces`` as far as they fit in the part and in ``room`` bytes; return
        what is left of them.

        Run in a worker thread: each piece is hashed as it is taken (hashlib releases the GIL), so the
        part's checksum is ready the moment it is full.
        """
        while pieces and self.filled < self.size and room > 0:
            piece = pieces[0]
            take = min(len(piece), self.size - self.filled, room)
            if take < len(piece):
                pieces[0], piece = piece[take:], piece[:take]
            else:
                pieces.pop(0)
            self.sha256.update(piece)
            self._take(piece)
            room -= take
            self.filled += take
        return pieces

    @property
    def full(self) -> bool:
        return self.filled == self.size

    @property
    def room(self) -> int:
        """How many more bytes the part can take into the buffer it has now."""
        return self.size - self.filled

    def _take(self, piece: memoryview) -> None:
        """Copy ``piece`` after the bytes filled."""
        raise NotImplementedError

    def body(self) -> Body:
        raise NotImplementedError

    def content(self) -> list[Buffer]:
        """The bytes filled so far, as views of the part's buffer (not a copy)."""
        raise NotImplementedError

    def close(self) -> list[mmap.mmap]:
        """Let go of the part's bytes; return the segments to give back to the pool (once)."""
        self.kept = 0
        return []


class _HeldPart(_Part):
    """A part held in memory: its bytes are copied into segments of ``SEGMENT`` (256 KiB) of the node's pool
    (:meth:`~eftgw.storage.budget.BufferBudget.take_segments`), taken as the part grows and within the
    writer's room, and sent as views of them. Segments come back to the pool once the part is stored or
    dropped and serve the next parts, so the copy lands in pages that are already mapped: no page fault, no
    zeroing, no allocation per chunk. The part keeps exactly its segments, whatever the chunks it was filled
    with (a chunk is never kept), so the chunks' buffers may be reused once :meth:`S3Writer.write_chunks`
    returns."""

    def __init__(self, number: int, size: int, reserved: int) -> None:
        super().__init__(number, size, reserved)
        self.segments: list[mmap.mmap] = []
        self.views: list[memoryview] = []

    @property
    def room(self) -> int:
        return len(self.segments) * SEGMENT - self.filled

    def extend(self, segments: list[mmap.mmap]) -> None:
        """Add ``segments`` after the part's buffer (on the event loop, before a fill)."""
        self.segments += segments
        self.views += [memoryview(segment) for segment in segments]
        self.kept = len(self.segments) * SEGMENT

    def _take(self, piece: memoryview) -> None:
        at = self.filled
        while len(piece):
            index, offset = divmod(at, SEGMENT)
            take = min(len(piece), SEGMENT - offset)
            self.views[index][offset : offset + take] = piece[:take]
            piece = piece[take:]
            at += take

    def body(self) -> Body:
        return Body(self.content())

    def content(self) -> list[Buffer]:
        whole, rest = divmod(self.filled, SEGMENT)
        return [*self.views[:whole], *([self.views[whole][:rest]] if rest else [])]

    def close(self) -> list[mmap.mmap]:
        super().close()
        segments, self.segments, self.views = self.segments, [], []
        return segments


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

    def content(self) -> list[Buffer]:
        return [self.view[: self.filled]]

    def close(self) -> list[mmap.mmap]:
        super().close()
        self.view.release()
        unmap(self.buffer)
        return []


class S3Writer:
    """Appends to one upload in progress from its committed state ``record`` + ``tail``."""

    block_size = BLOCK  # what the body pipeline gathers per worker thread hop (see ChunkWriter)
    copies_chunks = True  # a part copies the chunks into its segments before write_chunks returns

    def __init__(
        self,
        store: S3Store,
        key: str,
        record: Record,
        tail: Buffer,
        memory: int | None = None,
        block_size: int = BLOCK,
    ) -> None:
        self.block_size = block_size  # by the upload's transport (block_for), as its memory is
        self._store = store
        self._key = key
        # parts in flight plus the part filling stay within it: the upload's share (by its transport)
        self._memory = memory if memory is not None else store.writer_memory
        self._committed = record
        # the committed tail as pieces; None once a part took it: read again from the record
        self._committed_tail: list[Buffer] | None = [tail] if len(tail) else []
        self._upload = record.upload
        self._parts = list(record.parts)  # committed parts plus parts stored since, in order
        self._inflight: list[tuple[asyncio.Task[tuple[str, int]], _Part]] = []  # being stored, in order
        self._part: _Part | None = None  # the part filling (holds the tail after a commit)
        self._pending: list[Buffer] = list(self._committed_tail)  # committed bytes not in a part yet
        self._tail_in_part = False  # the committed tail is views of the part filling (since the commit)
        self._dirty = False

    @property
    def _size(self) -> int:
        filling = self._part.filled if self._part is not None else sum(len(p) for p in self._pending)
        inflight = sum(part.size for _task, part in self._inflight)
        return self._committed.base + sum(s for _e, s in self._parts) + inflight + filling

    @property
    def memory(self) -> int:
        """What this writer may keep in memory (see the module's docstring)."""
        return self._memory

    @property
    def held(self) -> int:
        """The memory the writer's parts keep: the parts in memory being stored plus the part filling."""
        filling = self._part.kept if self._part is not None else 0
        return sum(part.kept for _task, part in self._inflight) + filling

    def _number(self, inflight_index: int) -> int:
        return self._committed.first + len(self._parts) + inflight_index

    async def write(self, data: bytes) -> None:
        await self.write_chunks([data])

    async def write_chunks(self, chunks: Sequence[bytes]) -> None:
        await self.write_chunks_along(chunks, None)

    async def write_chunks_along(self, chunks: Sequence[bytes], along: Callable[[], None] | None) -> None:
        """Append ``chunks`` in order: a worker thread copies and hashes them into the part filling (see
        :meth:`_Part.fill`), after running ``along`` (the body pipeline's hashing of the block; see
        :class:`~eftgw.storage.base.HashingChunkWriter`) in the same hop. When the writer's memory is full, it
        waits for a part in flight. Nothing keeps the chunks once this returns (``copies_chunks``): their
        buffers may be reused."""
        if self._size + sum(len(c) for c in chunks) > self._committed.limit():
            raise StorageError("The upload is larger than S3 can store in one object (5 TiB).")
        pieces = [memoryview(c).cast("B") for c in chunks if len(c)]
        if not pieces:
            if along is not None:
                await asyncio.to_thread(along)
            return
        self._dirty = True
        while pieces:
            if self._part is None:
                await self._wait_for_room()
            part = self._part if self._part is not None else await self._start_part()
            pieces = await self._fill(part, pieces, along)
            along = None  # the first fill ran it
            if part.full:
                await self._cut(part)
            elif pieces:  # the writer's memory is full: the rest waits for a part in flight to be stored
                await self._wait_for_part()

    async def _start_part(self) -> _Part:
        """Reserve and take the buffer of the next part; it starts with the committed bytes not in a part."""
        number = self._number(len(self._inflight))
        size = part_size(number)
        if spooled_part(size, self._memory):  # in a temporary file: only the block being copied is memory
            part: _Part = _SpooledPart(number, self._store.spool(size))
        else:
            part = _HeldPart(number, size, await self._store.budget.acquire(size))
        self._part = part
        return part

    def _room(self, part: _Part, wanted: int) -> int:
        """How many more bytes ``part`` may take now, of the ``wanted`` bytes on their way: all it lacks if it
        is spooled; else its buffer grows by the segments that the bytes need and the writer's memory has
        left (taken from the pool on the event loop, before the fill), and the part takes what its buffer
        holds."""
        if isinstance(part, _HeldPart):
            short = min(wanted, part.size - part.filled) - part.room
            if short > 0:
                count = min(-(-short // SEGMENT), (self._memory - self.held) // SEGMENT)
                if count > 0:
                    part.extend(self._store.budget.take_segments(count))
        return part.room

    async def _fill(
        self, part: _Part, pieces: list[memoryview], along: Callable[[], None] | None = None
    ) -> list[memoryview]:
        """In a worker thread: ``along`` if given, then :meth:`_Part.fill` (first with the committed bytes not
        in a part yet), as far as the writer's memory allows; return the pieces left over."""
        pending, self._pending = self._pending, []
        if pending:
            pieces = [memoryview(p).cast("B") for p in pending] + pieces
        room = self._room(part, sum(piece.nbytes for piece in pieces))
        if room <= 0 and along is None:
            return pieces

        def fill() -> list[memoryview]:
            if along is not None:
                along()
            return part.fill(pieces, room) if room > 0 else pieces

        future = asyncio.get_running_loop().run_in_executor(None, fill)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])  # it writes into the part: let it end before anyone closes the part
            raise

    async def _cut(self, part: _Part) -> None:
        """Start storing the full ``part``; a spooled one waits until few enough parts are in flight."""
        await self._ensure_upload()
        self._part = None
        self._committed_tail = None  # do not hold it twice; a rollback reads it from the record
        self._tail_in_part = False
        self._inflight.append((asyncio.ensure_future(self._store_part(part)), part))
        running = self._harvest()
        while isinstance(part, _SpooledPart) and len(running) > SPOOLED_INFLIGHT:
            await self._wait_for(running)
            running = self._harvest()

    async def _store_part(self, part: _Part) -> tuple[str, int]:
        """UploadPart with the part's bytes, then give the part back. The request runs in a worker thread
        that reads the part's buffer until it ends, also if this task is cancelled meanwhile: the part is
        given back only after it ended (else its segments would serve the next part while urllib3 still
        sends them)."""
        assert self._upload is not None
        upload = asyncio.ensure_future(
            self._store.client.upload_part(
                self._committed.target, self._upload, part.number, part.body(), part.sha256.hexdigest()
            )
        )
        try:
            stored = await asyncio.shield(upload)
            return stored.etag, part.size
        except asyncio.CancelledError:
            await asyncio.wait([upload])
            raise
        finally:
            if upload.done():
                self._give_back(part)
            else:  # cancelled again while waiting for the request: give the part back once it ended
                upload.add_done_callback(lambda ended: self._ended(ended, part))

    def _ended(self, upload: asyncio.Future[Any], part: _Part) -> None:
        if not upload.cancelled():
            upload.exception()  # retrieved: the task that waited for it was cancelled
        self._give_back(part)

    def _give_back(self, part: _Part) -> None:
        """Give the part's segments and reservation back to the budget; a second call gives nothing."""
        segments = part.close()
        reserved, part.reserved = part.reserved, 0
        if segments or reserved:
            self._store.budget.give_back(segments, reserved)

    def _harvest(self) -> list[asyncio.Task[tuple[str, int]]]:
        """Take the stored parts at the front in order (a failed part raises here); return those running."""
        while self._inflight and self._inflight[0][0].done():
            self._parts.append(self._inflight.pop(0)[0].result())
        return [task for task, _part in self._inflight if not task.done()]

    async def _wait_for(self, running: list[asyncio.Task[tuple[str, int]]]) -> None:
        """Wait until one of the ``running`` parts is stored (its memory is free); raise if one failed."""
        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in running:
            if task.done() and task.exception() is not None:
                task.result()

    async def _wait_for_part(self) -> None:
        """The part filling ran out of the writer's memory: wait until a part in flight is stored."""
        await self._wait_for_room()

    async def _wait_for_room(self) -> None:
        """Wait until the parts in flight leave room for a segment more. Parts may have been stored while
        the part filled (its worker thread ran on after their uploads ended): then there is room at once."""
        running = self._harvest()
        while self._memory - self.held < SEGMENT:
            if not running:  # the part filling alone never exceeds the memory: parts larger are spooled
                raise RuntimeError(f"no room for {self._key} and no part in flight")
            await self._wait_for(running)
            running = self._harvest()

    async def _ensure_upload(self) -> None:
        """Start the multipart upload before its first part, and record it at once (for the orphan sweep)."""
        if self._upload is not None:
            return
        upload = await self._store.client.create_multipart(self._committed.target, {}, {})
        recorded = Record(self._committed.target, self._committed.base, upload, list(self._committed.parts))
        await self._store.put_record(self._key, recorded, await self._tail())
        self._committed = recorded
        self._upload = upload

    async def _tail(self) -> list[Buffer]:
        """The committed tail as pieces (from memory, or read back from the commit record)."""
        if self._committed_tail is not None:
            return self._committed_tail
        record, tail = await self._store.load(self._key)
        if record.upload != self._committed.upload or record.parts != self._committed.parts:
            raise StorageError(f"The commit record of {self._key} changed under its writer.")
        return [tail] if len(tail) else []

    async def _drain(self) -> None:
        """Wait for every part in flight; the first failure is raised after all have ended."""
        inflight, self._inflight = [task for task, _part in self._inflight], []
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
            self._tail_in_part = self._part is not None
            self._dirty = False
        return self._size

    async def rollback(self) -> None:
        # Parts in flight are let land, not cancelled: a cancelled task would leave its request running in
        # a worker thread, and it could then replace a part the next writer of this upload stored.
        inflight, self._inflight = [task for task, _part in self._inflight], []
        await asyncio.shield(asyncio.gather(*inflight, return_exceptions=True))
        self._parts = list(self._committed.parts)
        if self._tail_in_part and self._committed_tail is not None:
            # views of the part's buffer, which goes back to the pool: the tail is copied out first
            self._committed_tail = [b"".join(self._committed_tail)]
            self._tail_in_part = False
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
            self._pending = []
            self._committed_tail = None
            self._tail_in_part = False
