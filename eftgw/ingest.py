"""The body pipeline of an append: a request body streamed into the store in blocks, hashed on the way,
committed, and the whole-file digests carried from one durable offset to the next.

:class:`Ingest` is what :class:`eftgw.uploads.UploadService` hands the body to once it holds the upload's
lock and checked the request (steps 3 and 4 of its workflow):

- :meth:`Ingest.write_body` reads the body in blocks (the writer's ``block_size``: 2 MiB for the
  filesystem, 4 MiB for S3 over HTTPS and 2 MiB over SFTP); each block is hashed (whole-file SHA-256 and
  xxh128, and the request's own checksum if any) in a worker thread, beside the one that writes it or in the
  writer's own hop (:func:`block_write`), and the next block is read meanwhile
  (these two blocks are what :func:`eftgw.memory.pipeline_held` counts of an upload's 64 MiB outside its
  writer: keep them in step; the store's writer keeps what is left for the upload's transport,
  ``upload.via``);
  every few seconds it re-checks that the case is still open, and it stops if a newer request took over;
- at the end it commits the writer (fsync, or S3's commit record) and only then records the new offset
  with the digest state it belongs to (:meth:`Ingest.digest_state`), in one database transaction;
- :meth:`Ingest.digests_for` gives the digests of an upload's durable bytes: restored from the state saved
  with its offset, else rebuilt by reading the stored prefix once (counted in ``eftgw_digest_reread_bytes``);
- :meth:`Ingest.copy_in` fills a new upload with a finished file's bytes (SFTP continuing a file).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

from eftgw import metrics
from eftgw.clock import Clock
from eftgw.errors import BodyInterrupted, ChecksumMismatch, UploadLocked
from eftgw.hashing import ChunkChecksum, FileDigests, StateError
from eftgw.locks import UploadLease
from eftgw.model import FileRecord, Upload
from eftgw.ports import UploadRepository
from eftgw.storage import ChunkWriter, HashingChunkWriter, ObjectStore, StorageError, UploadWriter

log = logging.getLogger("eftgw.uploads")

BLOCK_SIZE = 1024 * 1024  # the block of a writer that does not name its own (ChunkWriter.block_size)
# Chunks smaller than this are gathered into one buffer: a client sending a body in tiny pieces cannot make a
# block hold a Python object per few bytes (a million of them per MiB).
SMALL_CHUNK = 64 * 1024
CASE_RECHECK_SECONDS = 2.0
# Saved instead of a digest state where it cannot be exported: only this process, which keeps the digests
# under this unique mark, may continue from it (and only while the row still holds the mark).
LOCAL_DIGESTS_MARK = b"EDL\x01"


class _TakenOver(Exception):
    pass


_T = TypeVar("_T")


# Writes one block and has its hashing (a callable that hashes the whole block) run in a worker thread: the
# writer's own hop, or one beside it (:func:`block_write`).
BlockWrite = Callable[[Sequence[bytes], Callable[[], None]], Awaitable[None]]


def block_write(writer: UploadWriter) -> BlockWrite:
    """How ``writer`` takes a block and its hashing: in the writer's own worker thread hop (a
    :class:`~eftgw.storage.base.HashingChunkWriter`: S3's, whose hop copies the block into its part); else at
    once in two worker threads (a :class:`ChunkWriter`: the filesystem's, whose ``pwritev`` and the hashing
    then overlap), or chunk by chunk beside the hashing. Chosen once per writer: the protocol checks inspect
    the writer's attributes, too slow to repeat for every block."""
    if isinstance(writer, HashingChunkWriter):
        return writer.write_chunks_along
    if isinstance(writer, ChunkWriter):
        write: Callable[[Sequence[bytes]], Awaitable[None]] = writer.write_chunks
    else:

        async def chunk_by_chunk(block: Sequence[bytes]) -> None:
            for chunk in block:
                await writer.write(chunk)

        write = chunk_by_chunk

    async def beside(block: Sequence[bytes], hashing: Callable[[], None]) -> None:
        # Both end before this returns, also when one fails: the digests are never updated behind a caller's
        # back.
        outcomes = await asyncio.gather(asyncio.to_thread(hashing), write(block), return_exceptions=True)
        for outcome in reversed(outcomes):  # the store's error first: it says more than a hashing one
            if isinstance(outcome, BaseException):
                raise outcome

    return beside


class Ingest:
    """Streams bodies into the store and commits them with their digests (see the module's docstring)."""

    def __init__(
        self,
        repo: UploadRepository,
        store: ObjectStore,
        clock: Clock,
        *,
        expiry: dt.timedelta,
        require_open: Callable[[str], Awaitable[object]],
    ) -> None:
        self.repo = repo
        self.store = store
        self.clock = clock
        self.expiry = expiry
        self.require_open = require_open
        # Digests that could not be exported, (the mark saved in its row, the digests at its offset).
        self.local_digests: dict[str, tuple[bytes, FileDigests]] = {}

    def forget(self, upload_id: str) -> None:
        """Drop the digests this process keeps for the upload (it finished, was cut back or went away)."""
        self.local_digests.pop(upload_id, None)

    # the body --------------------------------------------------------------------------------------

    async def write_body(
        self,
        upload: Upload,
        body: AsyncIterator[bytes],
        digests: FileDigests,
        checksum: ChunkChecksum | None,
        lease: UploadLease,
        check_room: Callable[[int], None],
    ) -> None:
        """Stream ``body`` into the upload's staging data at its offset and commit it.

        A body that can receive itself into the pipeline's blocks (a :class:`ReceivableBody` whose
        :meth:`~ReceivableBody.blocks` gives a :class:`BlockSource`) is received in place; any other is read
        as chunks. ``check_room(end)`` raises if data ending at ``end`` may not be stored; it is called
        before each chunk or block is taken in. Raises :class:`ChecksumMismatch` (nothing kept),
        :class:`UploadLocked` after a takeover (what arrived is kept), and the transport's
        :class:`BodyInterrupted` after keeping what arrived (unless the request had a checksum).
        """
        # the writer keeps what the upload's transport leaves of its memory (eftgw.memory.writer_share)
        writer = await self.store.open_writer(upload.staging_key, upload.offset, upload.via)
        block_size = writer.block_size if isinstance(writer, ChunkWriter) else BLOCK_SIZE
        pipeline = _Pipeline(block_write(writer), digests, checksum)
        reader = _Reader(lease)
        source = body.blocks() if isinstance(body, ReceivableBody) else None
        try:
            if source is not None:
                copies = isinstance(writer, ChunkWriter) and writer.copies_chunks
                written, stopped = await self._receive_blocks(
                    upload, source, pipeline, reader, block_size, copies, check_room
                )
            else:
                written, stopped = await self._gather_chunks(
                    upload, aiter(body), pipeline, reader, block_size, check_room
                )
            await pipeline.drain()
            keep = stopped is None or checksum is None
            if checksum is not None and stopped is None and not checksum.matches():
                metrics.CHECKSUM_FAILURES.inc()
                raise ChecksumMismatch()
            if not keep or written == 0:
                await writer.rollback()
            else:
                await asyncio.shield(self._commit(upload, writer, digests, written, lease))
        except BaseException:
            await pipeline.settle()
            await asyncio.shield(writer.rollback())
            raise
        finally:
            reader.close()
            if source is not None:
                source.close()
            await writer.close()
        if isinstance(stopped, _TakenOver):
            raise UploadLocked("A newer request took over this upload.")
        if stopped is not None:
            raise stopped

    async def _gather_chunks(
        self,
        upload: Upload,
        chunks: AsyncIterator[bytes],
        pipeline: _Pipeline,
        reader: _Reader,
        block_size: int,
        check_room: Callable[[int], None],
    ) -> tuple[int, Exception | None]:
        """Gather the body's chunks into blocks for ``pipeline``; the bytes taken in, and why it stopped
        early (``None`` at the body's end)."""
        # A block is the chunks as they came (no copy): they are hashed and written as they are. Small
        # chunks are gathered in ``small`` first, one copy of few bytes.
        block: list[bytes] = []
        small = bytearray()
        filled = written = 0
        stopped: Exception | None = None
        recheck_at = time.monotonic() + CASE_RECHECK_SECONDS
        while True:
            if time.monotonic() >= recheck_at:
                # A case closing takes effect at once, also for a request that is streaming.
                await self.require_open(upload.case_id)
                recheck_at = time.monotonic() + CASE_RECHECK_SECONDS
            try:
                chunk = await reader.wait(anext, chunks, None)
            except (BodyInterrupted, _TakenOver) as exc:
                stopped = exc
                break
            if chunk is None:
                break
            if not chunk:
                continue
            check_room(upload.offset + written + filled + len(chunk))
            filled += len(chunk)
            if len(chunk) < SMALL_CHUNK:
                small += chunk
                if len(small) >= SMALL_CHUNK:
                    block.append(bytes(small))
                    small.clear()
            else:
                if small:
                    block.append(bytes(small))
                    small.clear()
                # Kept until written: a chunk that its producer may change later is copied once.
                block.append(chunk if type(chunk) is bytes else bytes(chunk))
            if filled >= block_size:
                if small:
                    block.append(bytes(small))
                    small.clear()
                written += filled
                await pipeline.absorb(block)
                block, filled = [], 0
        if small:
            block.append(bytes(small))
        if block:
            written += filled
            await pipeline.absorb(block)
        return written, stopped

    async def _receive_blocks(
        self,
        upload: Upload,
        source: BlockSource,
        pipeline: _Pipeline,
        reader: _Reader,
        block_size: int,
        copies: bool,
        check_room: Callable[[int], None],
    ) -> tuple[int, Exception | None]:
        """Have ``source`` receive the body into blocks for ``pipeline``; the bytes taken in, and why it
        stopped early (``None`` at the body's end).

        The block being received is one of two buffers used in turn: the other is being hashed and written
        meanwhile, and the next block is received only once that ended (:meth:`_Pipeline.absorb`), so while
        both are busy the source receives nothing (it stops reading its connection). A writer that is done
        with a block when its write returns (``ChunkWriter.copies_chunks``: the filesystem's and S3's) gets
        the buffer itself; any other gets a copy of the block, which it may keep.
        """
        written = 0
        buffers: list[bytearray] = []
        recheck_at = time.monotonic() + CASE_RECHECK_SECONDS
        while source.remaining:
            if time.monotonic() >= recheck_at:
                await self.require_open(upload.case_id)
                recheck_at = time.monotonic() + CASE_RECHECK_SECONDS
            size = min(block_size, source.remaining)
            check_room(upload.offset + written + size)
            if len(buffers) < 2:
                buffer: bytearray = bytearray(size)  # the first is the largest: blocks only get shorter
                buffers.append(buffer)
            else:
                buffer = buffers[0]
                buffers.reverse()
            block = memoryview(buffer)[:size]
            try:
                await reader.wait(source.fill, block)
            except (BodyInterrupted, _TakenOver) as exc:
                if source.received:  # what arrived of this block is kept too, as it would be as chunks
                    written += source.received
                    await pipeline.absorb([bytes(block[: source.received])])
                return written, exc
            written += size
            if copies:  # every hasher takes any buffer
                await pipeline.absorb([cast(bytes, buffer if len(buffer) == size else block)])
            else:
                await pipeline.absorb([bytes(block)])
        return written, None

    async def _commit(
        self, upload: Upload, writer: UploadWriter, digests: FileDigests, written: int, lease: UploadLease
    ) -> None:
        if (
            not lease.may_commit()
        ):  # the lease expired (e.g. the database was unreachable): another may write now
            raise UploadLocked("This request lost its lock on the upload; what it sent was not kept.")
        durable = await writer.commit()
        upload.offset += written
        if durable != upload.offset:
            raise RuntimeError(f"store reports {durable} durable bytes, expected {upload.offset}")
        now = self.clock.now()
        upload.updated_at = now
        upload.expires_at = now + self.expiry
        upload.digest_state = self.digest_state(upload, digests)
        await self.repo.save_progress(upload, fence=lease.fence)
        metrics.UPLOADED_BYTES.labels(upload.via).inc(written)

    @staticmethod
    async def _consume(
        write: BlockWrite, digests: FileDigests, checksum: ChunkChecksum | None, block: Sequence[bytes]
    ) -> None:
        """Hash and write one block (its chunks, in order) with ``write`` (:func:`block_write`): the hashing
        runs in a worker thread (hashlib, OpenSSL and xxHash release the GIL), and has ended, like the write,
        when this returns."""

        def hash_block() -> None:
            for chunk in block:
                digests.update(chunk)
                if checksum is not None:
                    checksum.update(chunk)

        await write(block, hash_block)

    # a copy of a finished file -----------------------------------------------------------------------

    async def copy_in(self, upload: Upload, record: FileRecord, lease: UploadLease) -> None:
        """Fill the new upload's staging data with the file's bytes, hashing them on the way."""
        digests = FileDigests()
        writer = await self.store.open_writer(upload.staging_key, 0, upload.via)
        write = block_write(writer)
        try:
            async for block in self.store.read_object(record.object_key):
                metrics.DIGEST_REREAD_BYTES.inc(len(block))
                await self._consume(write, digests, None, [block])
            if digests.size != record.size or digests.sha256_hex != record.sha256:
                raise StorageError(
                    f"The stored bytes of {record.name} do not match its SHA-256; not continued."
                )
            if not lease.may_commit():
                raise UploadLocked("This request lost its lock on the upload.")
            durable = await writer.commit()
        except BaseException:
            await asyncio.shield(writer.rollback())
            raise
        finally:
            await writer.close()
        if durable != record.size:
            raise RuntimeError(f"store reports {durable} durable bytes, expected {record.size}")
        upload.offset = durable
        upload.updated_at = self.clock.now()
        upload.digest_state = self.digest_state(upload, digests)
        await self.repo.save_progress(upload, fence=lease.fence)

    # digests ---------------------------------------------------------------------------------------

    def digest_state(self, upload: Upload, digests: FileDigests) -> bytes:
        """The state to commit with ``upload.offset``: exported, else a mark of digests this process keeps."""
        self.local_digests.pop(upload.id, None)
        state = digests.export()
        if state is None:
            state = LOCAL_DIGESTS_MARK + secrets.token_bytes(16)
            self.local_digests[upload.id] = (state, digests.copy())
        return state

    async def digests_for(self, upload: Upload) -> FileDigests:
        """The digests of the upload's durable bytes: from the state saved with its offset, else re-read."""
        state = upload.digest_state
        reason = "no saved state"
        if state is not None and state.startswith(LOCAL_DIGESTS_MARK):
            mark, cached = self.local_digests.get(upload.id, (None, None))
            if mark == state and cached is not None and cached.size == upload.offset:
                return cached.copy()
            reason = "the state was kept by another process"
        elif state is not None:
            try:
                return FileDigests.restore(state, upload.offset)
            except StateError as exc:
                reason = str(exc)
        digests = FileDigests()
        if upload.offset:
            log.info(
                "rebuilding digests of upload %s from %d stored bytes (%s)", upload.id, upload.offset, reason
            )
            await rehash(self.store.read_staging(upload.staging_key, 0, upload.offset), digests)
        return digests


async def rehash(blocks: AsyncIterator[bytes], digests: FileDigests) -> None:
    """Add stored bytes to ``digests`` (counted in ``eftgw_digest_reread_bytes``)."""
    async for block in blocks:
        metrics.DIGEST_REREAD_BYTES.inc(len(block))
        await asyncio.to_thread(digests.update, block)


class _Pipeline:
    """One block hashed and written (:meth:`Ingest._consume`) while the next is gathered or received."""

    def __init__(self, write: BlockWrite, digests: FileDigests, checksum: ChunkChecksum | None) -> None:
        self._write = write
        self._digests = digests
        self._checksum = checksum
        self._pending: asyncio.Future[None] | None = None

    async def absorb(self, block: Sequence[bytes]) -> None:
        """Start hashing and writing ``block`` once the block before it is done (its buffer free again)."""
        await self.drain()
        self._pending = asyncio.ensure_future(
            Ingest._consume(self._write, self._digests, self._checksum, block)
        )

    async def drain(self) -> None:
        """Wait for the block under way, if any; its failure is raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def settle(self) -> None:
        """Wait for the block under way, if any, whatever its outcome (the body failed already)."""
        with contextlib.suppress(Exception):
            await self.drain()


class BlockSource(Protocol):
    """A body that receives itself into the pipeline's blocks (:class:`eftgw.http.receive.BlockReceiver`:
    the connection's socket or TLS layer writes it straight into them)."""

    @property
    def remaining(self) -> int:
        """Bytes of the body not yet received into a block."""
        ...

    @property
    def received(self) -> int:
        """Bytes the last :meth:`fill` received before it failed or was cancelled."""
        ...

    async def fill(self, block: memoryview) -> None:
        """Receive the body's next ``len(block)`` bytes (at most :attr:`remaining`) into ``block``; raise
        :class:`BodyInterrupted` if the body ends before (the bytes that did arrive: :attr:`received`)."""
        ...

    def close(self) -> None:
        """The pipeline takes no more of the body (the rest is read and dropped, or was received)."""
        ...


@runtime_checkable
class ReceivableBody(Protocol):
    """A body that may receive itself into the pipeline's blocks instead of being read as chunks."""

    def blocks(self) -> BlockSource | None:
        """The body as a :class:`BlockSource`, or ``None`` if it must be read as chunks (then iterated)."""
        ...


class _Reader:
    """Waits for a body's bytes until a newer request takes the upload over (its lease is interrupted).

    One waiter on the lease serves the whole body: reading costs no task of its own. If the lease is
    interrupted while a read waits for the client, that read is cancelled (the task that reads is cancelled
    at that ``await`` only, and un-cancelled), and :class:`_TakenOver` is raised instead.
    """

    def __init__(self, lease: UploadLease) -> None:
        self._lease = lease
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._reading = False
        self._fired = False
        self._waiter = asyncio.ensure_future(lease.interrupted.wait())
        self._waiter.add_done_callback(self._interrupted)

    def _interrupted(self, _: object) -> None:
        if self._waiter.cancelled():
            return
        self._fired = True
        if self._reading:
            self._task.cancel()

    async def wait(self, read: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """``await read(*args)``; :class:`_TakenOver` instead if a newer request came."""
        if self._fired or not self._lease.may_continue():
            raise _TakenOver()
        self._reading = True
        try:
            return await read(*args)
        except asyncio.CancelledError:
            if self._fired and self._task.uncancel() == 0:
                raise _TakenOver() from None
            raise
        finally:
            self._reading = False

    def close(self) -> None:
        self._waiter.cancel()


__all__ = [
    "BLOCK_SIZE",
    "LOCAL_DIGESTS_MARK",
    "SMALL_CHUNK",
    "BlockSource",
    "Ingest",
    "ReceivableBody",
    "rehash",
]
