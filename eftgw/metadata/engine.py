"""The database engine of a node: connection settings per dialect, and SQLite's one writer at a time.

SQLite lets one connection write at a time. Left to itself, a connection that wants to write while another
does sleeps in SQLite's busy handler (steps up to 100 ms, first come not first served) while it holds a
connection of the pool. Under load (a hundred uploads committing their parts) every pooled connection ends
up asleep in that handler: reads that never conflict with a writer in WAL mode (an HTTP ``HEAD``, a token
check, an SFTP ``stat``) wait for a connection, and after the pool's timeout they fail, as do writes whose
busy timeout runs out.

So on SQLite the writers of this process queue in order on one :class:`asyncio.Lock` *before* they take a
connection (:func:`begin_write`): one connection writes, the others stay free for readers, each commit
starts as soon as the previous one ended, and nobody polls. The busy handler remains for other processes on
the same file (the admin CLI beside ``serve``). PostgreSQL has row locks and needs no gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

# Connections of the pool for one SQLite file: readers run in parallel beside the one writer. Each is a
# thread of aiosqlite and SQLite's page cache (a few MiB at most), held only while in use.
SQLITE_POOL_SIZE = 10
SQLITE_MAX_OVERFLOW = 20
BUSY_TIMEOUT_MS = 30_000

_gates: weakref.WeakKeyDictionary[Engine, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def make_engine(url: str) -> AsyncEngine:
    """The async engine for a database URL (``sqlite+aiosqlite://...`` or ``postgresql://...``)."""
    if url.startswith("sqlite"):
        pool: dict[str, Any] = {}
        if ":memory:" not in url and "mode=memory" not in url:
            pool = {"pool_size": SQLITE_POOL_SIZE, "max_overflow": SQLITE_MAX_OVERFLOW}
        engine = create_async_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, **pool)

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets the admin CLI run beside `serve` and readers beside the writer; synchronous=FULL
            # makes a commit durable, which is what lets an acknowledged Upload-Offset survive kill -9 and
            # power loss.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _gate(engine: AsyncEngine) -> asyncio.Lock | None:
    """The writers' queue of this engine in the running loop; ``None`` where the database needs none."""
    if engine.dialect.name != "sqlite":
        return None
    loop = asyncio.get_running_loop()
    held = _gates.get(engine.sync_engine)
    if held is None or held[0] is not loop:  # a lock serves one event loop; a new loop gets a new one
        held = (loop, asyncio.Lock())
        _gates[engine.sync_engine] = held
    return held[1]


@contextlib.asynccontextmanager
async def begin_write(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that writes: ``engine.begin()``, after the process's earlier writers on SQLite."""
    gate = _gate(engine)
    if gate is None:
        async with engine.begin() as conn:
            yield conn
        return
    async with gate, engine.begin() as conn:
        yield conn


def waiting_writers(engine: AsyncEngine) -> int:
    """How many writers of this process wait for their turn (for tests and metrics)."""
    held = _gates.get(engine.sync_engine)
    if held is None:
        return 0
    waiters = getattr(held[1], "_waiters", None)
    return len(waiters) if waiters else 0
