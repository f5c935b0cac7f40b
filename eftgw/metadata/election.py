"""Leader election for jobs that must run once per region (retention sweeps, the orphan sweep).

Every node campaigns for the lease ``job:<name>``; the one that holds it is the leader until it stops renewing
(it shut down or died), after which another node takes over within ``ttl``. A leader considers itself leader
only until ``ttl / 2`` after its last renewal, so two nodes never both believe they lead.

Usage::

    async with elect(repo, "retention") as leadership:
        while True:
            if leadership.is_leader:
                await sweep()
            await asyncio.sleep(interval)

or simply ``await run_as_leader(repo, "retention", interval, sweep)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from eftgw.metadata.leases import Leases
from eftgw.metadata.repository import SqlRepository

log = logging.getLogger("eftgw.election")


class Leadership:
    """This node's standing in one election."""

    def __init__(self, job: str, holder: str) -> None:
        self.job = job
        self.holder = holder
        self.fence: int | None = None
        self._until = 0.0

    @property
    def is_leader(self) -> bool:
        return self.fence is not None and time.monotonic() < self._until


@contextlib.asynccontextmanager
async def elect(
    repo: SqlRepository, job: str, *, ttl: float = 30.0, holder: str | None = None
) -> AsyncIterator[Leadership]:
    """Campaign for leadership of ``job`` while the context is open; let go when it closes."""
    leases = Leases(repo.engine, ttl)
    name = f"job:{job}"
    leadership = Leadership(job, holder or secrets.token_hex(8))

    async def campaign_once() -> None:
        sent = time.monotonic()
        try:
            if leadership.fence is None:
                leadership.fence = await leases.acquire(name, leadership.holder, interrupt=False)
                if leadership.fence is not None:
                    log.info("this node now leads %s (fence %d)", job, leadership.fence)
            elif not await leases.renew(leadership.holder, name):
                log.warning("this node lost the lead of %s", job)
                leadership.fence = None
            if leadership.fence is not None:
                leadership._until = sent + ttl / 2
        except Exception:
            log.exception("election of %s: database unreachable; retrying", job)

    async def campaign() -> None:
        while True:
            await asyncio.sleep(ttl / 6)
            await campaign_once()

    await campaign_once()
    task = asyncio.create_task(campaign(), name=f"election-{job}")
    try:
        yield leadership
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if leadership.fence is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(leases.release(name, leadership.fence))
            leadership.fence = None


async def run_as_leader(
    repo: SqlRepository, job: str, interval: float, run: Callable[[], Awaitable[object]], *, ttl: float = 30.0
) -> None:
    """Run ``run`` every ``interval`` seconds on the node leading ``job``; failures are logged, not fatal."""
    async with elect(repo, job, ttl=ttl) as leadership:
        while True:
            if leadership.is_leader:
                try:
                    await run()
                except Exception:
                    log.exception("job %s failed; retrying in %.0f s", job, interval)
            await asyncio.sleep(interval)
