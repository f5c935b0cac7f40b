"""The bounded write buffer between SFTP ``write`` requests and :meth:`UploadService.append`.

An SFTP client pipelines many small writes. Each :class:`BufferedUpload` takes them into memory and returns at
once while there is room; a background task drains the buffer into the core in *parts*, each one
``UploadService.append`` call that ends with a durable commit. A write waits only when the buffer is full
(that wait is the backpressure the client feels); it never waits for storage while there is room.

A part ends when it has reached ``part_size`` bytes, or when the buffer ran dry and either ``min_part``
bytes went into it, ``linger`` seconds passed without data, or someone asked for a flush (close, fsync,
setstat, teardown). Memory per handle is bounded by ``capacity`` plus the request at the head of the queue
(a piece may take its first bytes; the queue keeps a view of the rest) and the one waiting for room, plus
what the core holds while it stores a part: pieces of at most ``PIECE``, gathered into blocks (one being
written and one being filled, 1 MiB each, 2 MiB on S3), and the store's writer (its share of the upload's
64 MiB, :func:`eftgw.memory.writer_share`). All handles of a node
together queue at most what their shared ``budget`` (``EFTGW_SFTP_WRITE_MEMORY``) allows: with a hundred
sessions writing at once a write waits for room in it (first come, first served) instead of growing memory
by ``capacity`` per handle.

Sizes: ``durable`` is what the core has committed (what ``stat`` reports and a crash keeps); ``end`` is where
the next write must start (durable + in flight + queued).

:class:`WriterRegistry` knows the one live buffer of each upload in this process, so that a client that
reconnects and reopens an upload takes it over cleanly from a connection that has not noticed it is dead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import TypeGuard

from eftgw.errors import DomainError, StorageUnavailable
from eftgw.ingest import SMALL_CHUNK
from eftgw.memory import SFTP_PIECE, SFTP_WRITE_BUFFER
from eftgw.model import Principal
from eftgw.storage.budget import BufferBudget
from eftgw.uploads import UploadService

log = logging.getLogger("eftgw.sftp.buffer")

PIECE = SFTP_PIECE  # the most bytes handed to the core at once (eftgw.memory counts them in the pipeline)
# A write that is a view of a larger buffer (the decrypted SSH packet it arrived in) is kept as a view only if
# that buffer holds at most this much more than the write (the SFTP and SSH headers around its data);
# otherwise it is copied, so that what the queue keeps alive is what it counts.
VIEW_SLACK = 1024
# A write of at least this many bytes that is a ``bytes`` of its own reaches the core as it is, not joined
# with others into a piece: the body pipeline keeps chunks this large as they come (eftgw.ingest.SMALL_CHUNK).
WHOLE_WRITE = SMALL_CHUNK


def unshared(data: bytes | memoryview) -> bytes | memoryview:
    """``data``, or a copy of it if it is a view that keeps alive more than ``VIEW_SLACK`` bytes besides its
    own (several writes, or other requests, in one packet: a client sending many tiny writes in large
    packets would otherwise make a queue of a few counted bytes hold whole packets)."""
    if isinstance(data, memoryview):
        with memoryview(data.obj) as whole:
            if whole.nbytes - data.nbytes > VIEW_SLACK:
                return bytes(data)
    return data


def _whole(data: bytes | memoryview) -> TypeGuard[bytes]:
    """Whether a queued write goes to the core as it is, a piece of its own: a ``bytes`` (nothing else holds
    it, so the pipeline keeps it without a copy) of ``WHOLE_WRITE`` to ``PIECE`` bytes. The write requests of
    OpenSSH's ``sftp`` (255 KiB) arrive as such (``asyncssh_requests.request_packet``); smaller writes and
    views are joined into pieces, one copy."""
    return type(data) is bytes and WHOLE_WRITE <= len(data) <= PIECE


class WriterDetached(DomainError):
    code = "writer_detached"
    status = 409
    default_message = "This upload was reopened by another connection; this handle can no longer write to it."


class WriterRetired(DomainError):
    code = "writer_retired"
    status = 409
    default_message = "This upload was finished by a rename; the handle has nothing more to write."


class BufferedUpload:
    """Writes to one upload in progress, buffered in memory and flushed in durable parts."""

    def __init__(
        self,
        uploads: UploadService,
        principal: Principal,
        case_id: str,
        upload_id: str,
        offset: int,
        *,
        capacity: int = SFTP_WRITE_BUFFER,
        part_size: int = 64 * 1024 * 1024,
        min_part: int = 1024 * 1024,
        linger: float = 0.2,
        budget: BufferBudget | None = None,
    ) -> None:
        self.uploads = uploads
        self.principal = principal
        self.case_id = case_id
        self.upload_id = upload_id
        self.capacity = capacity
        self.part_size = part_size
        self.min_part = min_part
        self.linger = linger
        self.budget = budget
        self.durable = offset
        self.end = offset
        self.error: DomainError | None = None
        self._queue: collections.deque[bytes | memoryview] = collections.deque()
        self._queued = 0
        self._flushing = False
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # data queued, space freed, a part committed, a flush asked for

    @property
    def buffered(self) -> int:
        """Bytes accepted but not yet durable."""
        return self.end - self.durable

    async def write(self, data: bytes | memoryview) -> None:
        """Queue ``data`` after everything accepted so far; wait only while the buffer is full. A view
        (of the SFTP request) that is most of its packet is kept as it is until it is joined with others
        into a piece of the part; a view of a small share of a larger packet is copied (:func:`unshared`)."""
        data = unshared(data)
        self._raise_error()
        while self._queued and self._queued + len(data) > self.capacity:
            self._changed.clear()
            await self._changed.wait()
            self._raise_error()
        if self.budget is not None:
            await self.budget.acquire(len(data))
            if self.error is not None:
                self.budget.release(self.budget.clamp(len(data)))
                self._raise_error()
        self._queue.append(data)
        self._queued += len(data)
        self.end += len(data)
        self._signal()
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=f"sftp-flush-{self.upload_id}")

    async def flush(self) -> None:
        """Wait until everything accepted is durable; raise the error that stopped the flushing, if any."""
        self._flushing = True
        self._signal()
        try:
            while self._task is not None:
                await asyncio.shield(self._task)
        finally:
            self._flushing = False
        self._raise_error()

    async def detach(self, reason: DomainError | None = None) -> None:
        """Make everything accepted durable (what arrived is kept), then refuse further writes."""
        with contextlib.suppress(DomainError):
            await self.flush()
        if self.error is None:
            self.error = reason or WriterDetached()

    async def discard(self, reason: DomainError) -> None:
        """Drop what is queued, wait for the part in flight, and refuse further writes."""
        self.error = reason
        self._drop_queue()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)

    def restart_at(self, offset: int) -> None:
        """After the upload was truncated (the buffer being empty): continue writing at ``offset``."""
        if self._task is not None or self._queue:
            raise RuntimeError("restart_at needs an idle buffer")
        self.durable = self.end = offset

    # the background part writer ------------------------------------------------------------------

    async def _drain(self) -> None:
        try:
            while self._queue and self.error is None:
                upload = await self.uploads.append(
                    self.principal, self.case_id, self.upload_id, self.durable, self._part()
                )
                self.durable = upload.offset
                self._signal()
        except DomainError as exc:
            self._fail(exc)
        except Exception:  # a bug or an unexpected backend failure: stop, report, never hang
            log.exception("flushing SFTP upload %s failed", self.upload_id)
            self._fail(StorageUnavailable())
        finally:
            self._task = None
            self._signal()

    async def _part(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.part_size:
            if not self._queue:
                if self._flushing or sent >= self.min_part or self.error is not None:
                    return
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), self.linger)
                except TimeoutError:
                    return
                continue
            pieces: list[bytes | memoryview] = []
            size = 0
            budget = 0  # what the budget gets back for the bytes taken (as much as they took of it)
            while self._queue and size < PIECE:
                if size and _whole(self._queue[0]):
                    break  # handed on alone next
                chunk = self._queue.popleft()
                if size + len(chunk) > PIECE:  # a piece is at most PIECE: the rest of the write stays queued
                    view = memoryview(chunk).cast("B")
                    taken, rest = view[: PIECE - size], view[PIECE - size :]
                    self._queue.appendleft(rest)
                    budget += self._budget_of(len(chunk)) - self._budget_of(len(rest))
                    chunk = taken
                else:
                    budget += self._budget_of(len(chunk))
                pieces.append(chunk)
                size += len(chunk)
                if _whole(chunk):
                    break  # handed on alone
            self._queued -= size
            if self.budget is not None:
                self.budget.release(budget)
            sent += size
            self._signal()
            if len(pieces) > 1:
                piece = b"".join(pieces)
            else:
                piece = pieces[0] if _whole(pieces[0]) else bytes(pieces[0])
            pieces.clear()  # not kept alive next to the piece while the core takes it
            yield piece

    def _fail(self, exc: DomainError) -> None:
        if self.error is None:
            self.error = exc
        self._drop_queue()

    def _budget_of(self, size: int) -> int:
        """What a queued write of ``size`` bytes took of the budget."""
        return self.budget.clamp(size) if self.budget is not None else 0

    def _release(self, pieces: Iterable[bytes | memoryview]) -> None:
        if self.budget is not None:
            for piece in pieces:
                self.budget.release(self.budget.clamp(len(piece)))

    def _drop_queue(self) -> None:
        dropped = self._queued
        self._release(self._queue)
        self._queue.clear()
        self._queued = 0
        self.end -= dropped
        self._signal()

    def _signal(self) -> None:
        self._changed.set()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error


class WriterRegistry:
    """The live :class:`BufferedUpload` of each upload in this process (at most one)."""

    def __init__(self) -> None:
        self._writers: dict[str, BufferedUpload] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def get(self, upload_id: str) -> BufferedUpload | None:
        return self._writers.get(upload_id)

    def __len__(self) -> int:
        return len(self._writers)

    async def take_over(self, upload_id: str, reason: DomainError | None = None) -> None:
        """Before a new handle writes to ``upload_id`` (or it is finished): the old writer keeps what it
        has, then stops with ``reason``."""
        old = self._pop(upload_id)
        if old is not None:
            await old.detach(reason)

    def register(self, writer: BufferedUpload) -> None:
        self._writers[writer.upload_id] = writer
        self._empty.clear()

    def release(self, writer: BufferedUpload) -> None:
        if self._writers.get(writer.upload_id) is writer:
            self._pop(writer.upload_id)

    async def settle(self, upload_id: str) -> None:
        """Make what the live writer of ``upload_id`` accepted durable, so sizes read now are complete."""
        writer = self._writers.get(upload_id)
        if writer is not None:
            with contextlib.suppress(DomainError):
                await writer.flush()

    async def discard(self, upload_id: str, reason: DomainError) -> None:
        """The upload is being cancelled or replaced: its live writer drops its queue and stops."""
        writer = self._pop(upload_id)
        if writer is not None:
            await writer.discard(reason)

    async def drained(self) -> None:
        """Return once no writer is live (every handle's data made durable and released)."""
        await self._empty.wait()

    def _pop(self, upload_id: str) -> BufferedUpload | None:
        writer = self._writers.pop(upload_id, None)
        if not self._writers:
            self._empty.set()
        return writer
