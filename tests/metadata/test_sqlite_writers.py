"""SQLite under many writers at once: the process's writers queue for their turn without holding connections,
so readers (a tus HEAD, a token check, an SFTP stat) are answered while a write is slow.

Found by ``bench/mix_100.py``: with 100 uploads committing at once, every pooled connection sat in SQLite's
busy handler waiting for the write lock, and HEADs and SFTP stats failed after the pool's 30 s timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import sqlalchemy as sa

from eftgw.metadata import SqlRepository
from eftgw.metadata.engine import waiting_writers
from eftgw.model import AuditEvent, Case, CaseState

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
WRITERS = 40


async def test_readers_are_answered_while_writers_wait_for_a_slow_write(tmp_path: Path) -> None:
    """One write transaction holds SQLite's write lock (as a slow commit would) while 40 more writes are
    asked for: they queue on the process's gate instead of taking (and starving) the pool, so a read is
    answered at once; when the slow write ends every queued write commits, none fails."""
    repo = SqlRepository(f"sqlite+aiosqlite:///{tmp_path / 'eftgw.sqlite3'}")
    await repo.migrate()
    try:
        await repo.save_case(Case("C-1", CaseState.OPEN, T0))
        release = asyncio.Event()
        holding = asyncio.Event()

        async def slow_writer() -> None:
            async with repo.engine.begin() as conn:  # takes the write lock and keeps it
                await conn.execute(sa.text("UPDATE cases SET updated_at = updated_at"))
                holding.set()
                await release.wait()

        slow = asyncio.create_task(slow_writer())
        await holding.wait()
        events = [AuditEvent(T0, "test.write", f"user{i}", "customer", "C-1") for i in range(WRITERS)]
        writers = [asyncio.create_task(repo.add_audit(e)) for e in events]
        for _ in range(200):  # bounded: until the writers queued (at most 10 s)
            if waiting_writers(repo.engine) >= WRITERS - 1:
                break
            await asyncio.sleep(0.05)
        assert waiting_writers(repo.engine) >= WRITERS - 1
        pool = repo.engine.sync_engine.pool
        assert pool.checkedout() <= 2, pool.status()  # the slow writer and the first queued writer
        # Before the gate, ~15 writers each held a connection asleep in the busy handler: this read waited for
        # the pool until its 30 s timeout.
        case = await asyncio.wait_for(repo.get_case("C-1"), timeout=20)
        assert case is not None
        release.set()
        await slow
        await asyncio.wait_for(asyncio.gather(*writers), timeout=60)
        audited = await repo.list_audit(case_id="C-1")
        assert len([a for a in audited if a.action == "test.write"]) == WRITERS
    finally:
        await repo.close()
