"""The node-wide budget for upload buffers: writers wait for room instead of growing memory.

Every S3 writer holds the part it is filling and the parts it is uploading in memory; whether the upload
came over HTTPS or SFTP, it takes that room from one :class:`BufferBudget` (``EFTGW_UPLOAD_MEMORY``) first.
A writer reserves a whole part before it starts filling it and gives it back when the part is stored. It
waits for the budget only then, holding nothing but parts on their way to S3, so the budget cannot
deadlock: the room held is always on its way to S3 or being filled by a client that is sending. (A writer
whose own share of memory is full waits with a half-filled part, but for its own parts in flight, which
need nothing from the budget.) While a writer waits it does not read its request body, so TCP backpressure
slows the client down.

The budget also keeps the node's **part buffers**: a part in memory is filled into segments of ``SEGMENT``
(256 KiB) taken from :meth:`BufferBudget.take_segments` and handed back with its reservation
(:meth:`BufferBudget.give_back`); segments given back stay mapped for the next parts, so a part's bytes
land in pages that are already there (no page fault, no zeroing) and are copied once. The segments are
anonymous memory maps (``mmap``), outside the C allocator's arenas. The pool, the segments idle and the
segments in use together, never exceeds the budget's limit: a writer takes segments only within its
reservation, and a segment given back beyond the limit (a part larger than the whole budget) is unmapped.
So after a burst of uploads the node keeps up to the budget mapped for the next ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import logging
import mmap
import platform
import tempfile
from pathlib import Path

log = logging.getLogger("eftgw.storage")

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # the most glibc's own dynamic threshold reaches on 64-bit
TRIM_THRESHOLD = 64 * 1024 * 1024  # free memory kept at the top of the heap: one upload's buffers
SEGMENT = 256 * 1024  # a part buffer's unit: parts (16 MiB << n) and a writer's room are counted in them


class BufferBudget:
    """A pool of ``limit`` bytes handed out first come, first served."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("the upload buffer budget must be positive")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._idle: list[mmap.mmap] = []  # part buffer segments mapped and free, reused last in first out
        self.lent = 0  # segments in parts now
        self.mapped = 0  # segments ever mapped (a test sees reuse in it)

    def clamp(self, size: int) -> int:
        """What a request for ``size`` bytes really takes: never more than the whole budget."""
        return min(size, self.limit)

    async def acquire(self, size: int) -> int:
        """Wait until ``size`` bytes (at most the whole budget) are free, take them and return the amount."""
        size = self.clamp(size)
        if not self._waiters and self.used + size <= self.limit:
            self._take(size)
            return size
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted as we were cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        return size

    def _take(self, size: int) -> None:
        self.used += size
        self.peak = max(self.peak, self.used)

    def release(self, size: int) -> None:
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            size, waiter = self._waiters.popleft()
            if not waiter.done():
                self._take(size)
                waiter.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def idle(self) -> int:
        """How many part buffer segments are mapped and free for the next parts."""
        return len(self._idle)

    def take_segments(self, count: int) -> list[mmap.mmap]:
        """``count`` segments of ``SEGMENT`` bytes for a part, free ones first, else newly mapped (a new
        anonymous map is zero and takes its pages as they are first written). The caller holds a reservation
        that covers them; run on the event loop (the pool has no lock)."""
        reused = min(count, len(self._idle))
        taken = self._idle[len(self._idle) - reused :]
        del self._idle[len(self._idle) - reused :]
        taken += [mmap.mmap(-1, SEGMENT) for _ in range(count - reused)]
        self.mapped += count - reused
        self.lent += count
        return taken

    def give_back(self, segments: list[mmap.mmap], reserved: int) -> None:
        """A part is done: keep its ``segments`` for the next parts and release its ``reserved`` bytes. The
        segments nobody may read any more (no view of them is sent or kept); beyond the budget's limit, the
        pool unmaps them."""
        self.lent -= len(segments)
        keep = max(0, min(len(segments), self.limit // SEGMENT - self.lent - len(self._idle)))
        self._idle += segments[:keep]
        for segment in segments[keep:]:
            unmap(segment)
        self.release(reserved)

    def drop_idle(self) -> None:
        """Unmap the free segments (the store closes)."""
        idle, self._idle = self._idle, []
        for segment in idle:
            unmap(segment)


def spooled(size: int, directory: Path | None = None) -> mmap.mmap:
    """A writable buffer of ``size`` bytes kept in an unlinked temporary file in ``directory``, not in memory.

    Parts larger than a writer may hold in memory are filled here: the kernel writes the pages back to the
    file and drops them under memory pressure (they are page cache, not the process's anonymous memory), and
    the file vanishes with the last reference to the mapping, also when the process is killed.
    """
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory) as file:
        file.truncate(size)
        return mmap.mmap(file.fileno(), size)


def unmap(buffer: mmap.mmap) -> None:
    """Close a :func:`spooled` buffer or a segment now if no view of it is left (else when the last view
    goes)."""
    with contextlib.suppress(BufferError):
        buffer.close()


def keep_freed_buffers(keep: int = TRIM_THRESHOLD) -> bool:
    """Make the C allocator keep freed upload buffers for the next ones (process-wide; glibc only). The
    gateway calls it once when it starts (:meth:`eftgw.gateway.Gateway.start`), whatever its store, with
    its upload budget (``EFTGW_UPLOAD_MEMORY``) as ``keep``: the chunks of bodies read as aiohttp's chunks or
    over SFTP are freed once written (filesystem) or copied into a part's segments (S3), by as many uploads as
    run at once. (S3's part buffers themselves are pooled segments, mapped outside the allocator.)

    Upload buffers are the chunks a request body arrived in (256 KiB each) kept until their part is stored,
    then freed 16 MiB at a time. With glibc's defaults, freeing them shrinks the heap (its trim threshold
    follows the mmap threshold, 512 KiB here) and the next part's chunks touch fresh pages: a page fault and
    a zeroed page per 4 KiB received, about 65,000 per GiB. Fixed thresholds keep up to ``keep`` (at least
    ``TRIM_THRESHOLD``) of freed memory for reuse and every buffer under ``MMAP_THRESHOLD`` in the heap.
    With eight S3 uploads at once, 64 MiB was not enough: their parts free more than that together, and the
    gateway took 28,000-48,000 page faults per GiB; with the budget kept, a few hundred. The memory kept is
    memory the uploads held at their peak, under the budget: the peak RSS does not grow, but the RSS stays
    near it after a burst of uploads instead of falling back.
    Returns whether the allocator took them.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mmap_taken: int = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        trim_taken: int = libc.mallopt(M_TRIM_THRESHOLD, max(keep, TRIM_THRESHOLD))
    except (OSError, AttributeError) as exc:  # no such library or symbol: the defaults stay
        log.debug("could not tune the C allocator: %s", exc)
        return False
    return mmap_taken == 1 and trim_taken == 1
