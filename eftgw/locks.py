"""Upload locks: one writer per upload at a time; a newer request takes over from a stale one.

A writer holds a :class:`UploadLease`. When another request wants the same upload, the holder's lease is
marked ``interrupted``; the holder stops reading its body at once, commits what arrived and releases. This is
how a client that reconnected after a network drop does not wait for the server to notice the old connection
died. :class:`LocalUploadLocks` works within one process; a multi-node backend implements the same protocol
with database leases and fencing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

from eftgw.errors import UploadLocked


class UploadLease:
    fence: int | None = None
    """The fencing token of a cross-node lease (``None`` in one process); fenced writes carry it."""

    def __init__(self) -> None:
        self.interrupted = asyncio.Event()

    def may_continue(self) -> bool:
        """Whether the holder may go on reading and writing: ``False`` once a newer request asked to take
        over (or the lease expired). A holder that may not continue commits what arrived and lets go."""
        return not self.interrupted.is_set()

    def may_commit(self) -> bool:
        """Whether the holder may still commit to the store: ``False`` only once the lease expired (another
        holder may be writing now). A holder asked to let go still may, and must, commit what arrived."""
        return True


class UploadLocks(Protocol):
    def hold(self, upload_id: str) -> contextlib.AbstractAsyncContextManager[UploadLease]:
        """Hold the upload's lock, taking it over from a current holder (waiting ``takeover_timeout``)."""
        ...

    async def close(self) -> None:
        """Stop the background work of the locks (a lease heartbeat, releases under way) before the
        database they use is closed."""
        ...


class LocalUploadLocks:
    def __init__(self, takeover_timeout: float = 15.0) -> None:
        self.takeover_timeout = takeover_timeout
        self._locks: dict[str, asyncio.Lock] = {}
        self._leases: dict[str, UploadLease] = {}
        self._waiters: dict[str, int] = {}

    async def close(self) -> None:
        """Nothing runs in the background of locks in one process."""

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[UploadLease]:
        lock = self._locks.setdefault(upload_id, asyncio.Lock())
        current = self._leases.get(upload_id)
        if current is not None:
            current.interrupted.set()
        self._waiters[upload_id] = self._waiters.get(upload_id, 0) + 1
        try:
            try:
                await asyncio.wait_for(lock.acquire(), self.takeover_timeout)
            except TimeoutError as exc:
                raise UploadLocked() from exc
        finally:
            self._waiters[upload_id] -= 1
        lease = UploadLease()
        self._leases[upload_id] = lease
        try:
            yield lease
        finally:
            if self._leases.get(upload_id) is lease:
                del self._leases[upload_id]
            lock.release()
            if self._waiters.get(upload_id) == 0 and not lock.locked():
                self._locks.pop(upload_id, None)
                self._waiters.pop(upload_id, None)
