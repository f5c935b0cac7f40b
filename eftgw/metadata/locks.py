"""Upload locks across gateway nodes: database leases with fencing tokens (:class:`SqlUploadLocks`).

The protocol is :class:`eftgw.locks.UploadLocks`, the same as in one process:

1. A request that wants an upload flags the current holder's lease (``interrupt``) and polls until it can
   take the lease: when the holder released it, or when it expired (the holder's node died). It gives up with
   :class:`~eftgw.errors.UploadLocked` after ``takeover_timeout``.
2. Each node renews all its leases with one UPDATE every ``heartbeat`` seconds. A holder whose lease was
   flagged sees it at its next heartbeat (at once if the newer request is on the same node): its lease's
   ``interrupted`` event is set, the upload service stops reading the body, commits what arrived, releases.
3. A holder that cannot renew (its database connection is gone) stops on its own: its lease's
   :meth:`~SqlLease.may_commit` turns false ``ttl / 2`` after the last renewal it sent, well before the
   database lets anyone else take it (``ttl`` after that renewal). The upload service checks
   :meth:`~SqlLease.may_commit` before it commits to the store, so a stale holder does not overwrite data of
   the newer one.
4. Fencing: each lease carries the fence it was taken with. ``SqlRepository.save_progress(upload, fence)``
   records a new offset only while the lease row still has that fence, so a holder that lost its lease
   (it paused longer than ``ttl``) can never move an offset another holder acknowledged.

What remains unfenced is the store itself: an S3 request a holder sent just before its local deadline and that
took longer than ``ttl / 2`` to complete could land after another node took over. S3 offers no conditional
writes on every server (Ceph RGW 16 has none), so the S3 client's timeouts are what bound that window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator

from eftgw.errors import UploadLocked
from eftgw.locks import UploadLease
from eftgw.metadata.leases import Leases
from eftgw.metadata.repository import SqlRepository

log = logging.getLogger("eftgw.locks")


def upload_lease_name(upload_id: str) -> str:
    return f"upload:{upload_id}"


class SqlLease(UploadLease):
    """A held upload lease: ``fence`` for fenced writes, :meth:`may_commit` for the holder's own deadline."""

    fence: int

    def __init__(self, name: str, fence: int, valid_for: float) -> None:
        super().__init__()
        self.name = name
        self.fence = fence
        self.taken_at = time.monotonic()  # a renewal sent before this cannot have seen the lease
        self._lost = False
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.extend(time.monotonic() + valid_for)

    def extend(self, deadline: float) -> None:
        """Hold until ``deadline`` (monotonic seconds) unless renewed again."""
        self._deadline = deadline
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(
            asyncio.get_running_loop().time() + (deadline - time.monotonic()), self.interrupted.set
        )

    def lose(self) -> None:
        """The lease was taken or expired: stop at once."""
        self._lost = True
        self.interrupted.set()

    def may_commit(self) -> bool:
        return not self._lost and time.monotonic() < self._deadline

    def may_continue(self) -> bool:
        return not self.interrupted.is_set() and self.may_commit()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class SqlUploadLocks:
    """:class:`~eftgw.locks.UploadLocks` over the ``leases`` table, for several nodes sharing one database."""

    def __init__(
        self,
        repo: SqlRepository,
        *,
        ttl: float = 10.0,
        heartbeat: float = 1.0,
        takeover_timeout: float = 15.0,
        holder: str | None = None,
    ) -> None:
        if heartbeat * 3 > ttl:
            raise ValueError("the heartbeat must be at most a third of the lease time")
        self.leases = Leases(repo.engine, ttl)
        self.ttl = ttl
        self.heartbeat = heartbeat
        self.takeover_timeout = takeover_timeout
        self.holder = holder or secrets.token_hex(8)
        self._held: dict[str, list[SqlLease]] = {}
        self._beat: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()  # releases that outlive a cancelled holder

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[SqlLease]:
        name = upload_lease_name(upload_id)
        for local in self._held.get(name, []):
            local.interrupted.set()  # the holder is on this node: no need to wait for its heartbeat
        lease = await self._acquire(name)
        self._held.setdefault(name, []).append(lease)
        self._ensure_heartbeat()
        try:
            yield lease
        finally:
            lease.close()
            self._held[name].remove(lease)
            if not self._held[name]:
                del self._held[name]
            release = asyncio.ensure_future(self._release(name, upload_id, lease.fence))
            self._releasing.add(release)
            release.add_done_callback(self._releasing.discard)
            await asyncio.shield(release)

    async def close(self) -> None:
        """Let releases under way finish and stop the heartbeat, so that no task of these locks still uses
        (or is about to take) a database connection when the engine is disposed. A lease still held stays in
        the database until it expires, as when the node dies."""
        if self._releasing:
            await asyncio.wait(list(self._releasing))
        beat, self._beat = self._beat, None
        if beat is not None and not beat.done():
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _acquire(self, name: str) -> SqlLease:
        deadline = time.monotonic() + self.takeover_timeout
        pause = 0.02
        while True:
            sent = time.monotonic()
            fence = await self.leases.acquire(name, self.holder, interrupt=True)
            if fence is not None:
                return SqlLease(name, fence, sent + self.ttl / 2 - time.monotonic())
            if time.monotonic() + pause > deadline:
                raise UploadLocked()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    async def _release(self, name: str, upload_id: str, fence: int) -> None:
        try:
            await self.leases.release(name, fence)
            await self.leases.forget_upload(name, upload_id)
        except Exception:
            log.exception("could not release %s; it expires in %.0f s", name, self.ttl)

    def _ensure_heartbeat(self) -> None:
        if self._beat is None or self._beat.done():
            self._beat = asyncio.create_task(self._heartbeat(), name=f"lease-heartbeat-{self.holder}")

    async def _heartbeat(self) -> None:
        while self._held:
            await asyncio.sleep(self.heartbeat)
            sent = time.monotonic()
            try:
                held = {(h.name, h.fence): h for h in await self.leases.renew(self.holder)}
            except Exception:
                log.exception("lease renewal failed; leases held here stop in %.0f s", self.ttl / 2)
                continue
            for name, local in list(self._held.items()):
                for lease in local:
                    if lease.taken_at >= sent:
                        continue  # taken while this renewal was on its way: its answer says nothing of it
                    renewed = held.get((name, lease.fence))
                    if renewed is None:
                        lease.lose()
                        continue
                    lease.extend(sent + self.ttl / 2)
                    if renewed.interrupt:
                        lease.interrupted.set()
