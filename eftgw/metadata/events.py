"""The outbox of integration events (:mod:`eftgw.events`): storing them with the change they report, reading
them in ``seq`` order, and their webhook delivery state.

:func:`append_events` is what every change method of the repository calls, inside its own transaction, as
its LAST statement: on PostgreSQL it first takes a transaction-level advisory lock (one constant for the whole
outbox), so transactions that append events do so one at a time, from their first event's ``seq`` until their
commit. ``seq`` values are therefore handed out in commit order: a reader that has seen ``seq = n`` never
later finds a smaller one committed (the pull API's cursor relies on this). SQLite has one writer at a time
anyway. Appending last keeps the lock's hold short and means a transaction holding it waits for no other
row lock (no deadlock with the change statements of others).

:class:`EventStore` is the :class:`~eftgw.ports.EventRepository` half of :class:`SqlRepository`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eftgw.events import Delivery, Event
from eftgw.metadata import rows
from eftgw.metadata import schema as t
from eftgw.metadata.engine import begin_write
from eftgw.model import SftpAccount

# pg_advisory_xact_lock key of the outbox ("evt" + 1); migrations use 4242001.
OUTBOX_LOCK = 4242101
_IN_CHUNK = 500
#: ``next_attempt_at`` of a new or replayed event: due at once, whatever the clock of the node that made it
#: says (an event minted by ``retention run --now <later>``, or on a node whose clock runs ahead, is not held
#: back until that time).
DUE_AT_ONCE = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

_e = t.events.c
_PENDING = sa.and_(_e.delivered_at.is_(None), _e.dead_at.is_(None))


EVENTS_STORED = "eftgw.events_stored"


def watch_commits(engine: AsyncEngine, committed: Callable[[], None]) -> Callable[[], None]:
    """Call ``committed()`` (in the event loop's thread) after each commit of this process that stored events:
    the webhook sender then looks at once instead of at its next poll.

    :func:`append_events` marks the connection; a rollback clears the mark; the connection's return to the
    pool, which follows its commit, reports it. Returns the function that stops the watching."""
    loop = asyncio.get_running_loop()

    def rolled_back(conn: Connection) -> None:
        conn.info.pop(EVENTS_STORED, None)

    def checked_in(dbapi_connection: object, record: Any) -> None:
        if record is not None and record.info.pop(EVENTS_STORED, False):
            loop.call_soon_threadsafe(committed)

    sa.event.listen(engine.sync_engine, "rollback", rolled_back)
    sa.event.listen(engine.sync_engine.pool, "checkin", checked_in)

    def unwatch() -> None:
        sa.event.remove(engine.sync_engine, "rollback", rolled_back)
        sa.event.remove(engine.sync_engine.pool, "checkin", checked_in)

    return unwatch


async def append_events(conn: AsyncConnection, events: Sequence[Event]) -> None:
    """Store ``events`` in the transaction of ``conn``, pending and due at once (call it last)."""
    if not events:
        return
    conn.info[EVENTS_STORED] = True  # for listeners of commits that stored events (see watch_commits)
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({OUTBOX_LOCK})"))
    await conn.execute(
        sa.insert(t.events),
        [
            {
                "id": event.id,
                "type": event.type,
                "at": event.at,
                "region": event.region,
                "case_id": event.case_id,
                "data": dict(event.data),
                "attempts": 0,
                "next_attempt_at": DUE_AT_ONCE,
            }
            for event in events
        ],
    )


async def scrub_purged_events(conn: AsyncConnection, case_ids: Sequence[str]) -> None:
    """A purge leaves nothing of its cases behind: their delivered and dead events go, and their pending
    ones (still to be sent) keep their ids and counts but lose any file name (``name`` becomes ``null``)."""
    for start in range(0, len(case_ids), _IN_CHUNK):
        chunk = list(case_ids[start : start + _IN_CHUNK])
        await conn.execute(sa.delete(t.events).where(_e.case_id.in_(chunk), sa.not_(_PENDING)))
        named = await conn.execute(sa.select(_e.seq, _e.data).where(_e.case_id.in_(chunk), _PENDING))
        for seq, data in named.all():
            if isinstance(data, dict) and data.get("name") is not None:
                await conn.execute(
                    sa.update(t.events).where(_e.seq == seq).values(data={**data, "name": None})
                )


def _event(row: Row[Any]) -> Event:
    return rows.event(row)


def _delivery(row: Row[Any]) -> Delivery:
    return Delivery(
        event=rows.event(row),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
        dead_at=row.dead_at,
        last_status=row.last_status,
        last_error=row.last_error,
    )


class EventStore:
    """The outbox's queries; mixed into :class:`~eftgw.metadata.SqlRepository`, which supplies ``engine``."""

    engine: AsyncEngine

    async def add_events(self, events: Sequence[Event]) -> None:
        async with begin_write(self.engine) as conn:
            await append_events(conn, events)

    async def events_after(self, after: int, limit: int) -> list[Event]:
        query = sa.select(t.events).where(_e.seq > after).order_by(_e.seq).limit(limit)
        async with self.engine.connect() as conn:
            return [_event(r) for r in await conn.execute(query)]

    async def due_deliveries(self, now: dt.datetime, limit: int) -> list[Delivery]:
        """One query: pending events due by ``now`` that no earlier pending event of their case holds back.

        The outer scan walks the partial index of pending events in ``seq`` order; the ``NOT EXISTS`` probe
        is one lookup in the partial ``(case_id, seq)`` index of pending events."""
        earlier = t.events.alias("earlier")
        ahead = (
            sa.select(sa.literal(1))
            .where(
                earlier.c.case_id == _e.case_id,
                earlier.c.seq < _e.seq,
                earlier.c.delivered_at.is_(None),
                earlier.c.dead_at.is_(None),
            )
            .exists()
        )
        query = (
            sa.select(t.events)
            .where(_PENDING, _e.next_attempt_at <= now, sa.or_(_e.case_id.is_(None), ~ahead))
            .order_by(_e.seq)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [_delivery(r) for r in await conn.execute(query)]

    async def record_delivered(self, seq: int, at: dt.datetime, status: int) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(
                sa.update(t.events)
                .where(_e.seq == seq)
                .values(delivered_at=at, attempts=_e.attempts + 1, last_status=status, last_error=None)
            )

    async def record_failure(
        self, seq: int, next_attempt_at: dt.datetime, status: int | None, error: str
    ) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(
                sa.update(t.events)
                .where(_e.seq == seq)
                .values(
                    attempts=_e.attempts + 1,
                    next_attempt_at=next_attempt_at,
                    last_status=status,
                    last_error=error[:2000],
                )
            )

    async def record_dead(self, seq: int, at: dt.datetime, status: int | None, error: str) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(
                sa.update(t.events)
                .where(_e.seq == seq, _e.delivered_at.is_(None))
                .values(dead_at=at, attempts=_e.attempts + 1, last_status=status, last_error=error[:2000])
            )

    async def list_deliveries(self, state: str | None, after: int, limit: int) -> list[Delivery]:
        query = sa.select(t.events).where(_e.seq > after).order_by(_e.seq).limit(limit)
        if state == "pending":
            query = query.where(_PENDING)
        elif state == "delivered":
            query = query.where(_e.delivered_at.is_not(None))
        elif state == "dead":
            query = query.where(_e.delivered_at.is_(None), _e.dead_at.is_not(None))
        elif state is not None:
            raise ValueError(f"unknown delivery state {state!r}")
        async with self.engine.connect() as conn:
            return [_delivery(r) for r in await conn.execute(query)]

    async def replay(self, event_ids: Sequence[str] | None, now: dt.datetime) -> int:
        dead = sa.and_(_e.delivered_at.is_(None), _e.dead_at.is_not(None))
        again = {"dead_at": None, "attempts": 0, "next_attempt_at": DUE_AT_ONCE}
        count = 0
        async with begin_write(self.engine) as conn:
            if event_ids is None:
                count = (await conn.execute(sa.update(t.events).where(dead).values(**again))).rowcount
            else:
                for start in range(0, len(event_ids), _IN_CHUNK):
                    chunk = list(event_ids[start : start + _IN_CHUNK])
                    update = sa.update(t.events).where(dead, _e.id.in_(chunk)).values(**again)
                    count += (await conn.execute(update)).rowcount
        return count

    async def outbox_stats(self) -> tuple[int, dt.datetime | None]:
        query = sa.select(sa.func.count(), sa.func.min(_e.at)).where(_PENDING)
        async with self.engine.connect() as conn:
            count, oldest = (await conn.execute(query)).one()
        return int(count), oldest

    async def prune_events(self, before: dt.datetime) -> int:
        async with begin_write(self.engine) as conn:
            result = await conn.execute(sa.delete(t.events).where(_e.at < before, sa.not_(_PENDING)))
        return int(result.rowcount)

    # sftp_account.expired, exactly once ------------------------------------------------------------

    async def accounts_expired_unreported(self, now: dt.datetime, limit: int = 500) -> list[SftpAccount]:
        """Accounts that expired by ``now`` (not revoked before that) whose expiry no event reported yet."""
        c = t.sftp_accounts.c
        query = (
            sa.select(t.sftp_accounts)
            .where(
                c.expires_at <= now,
                c.expiry_reported_at.is_(None),
                sa.or_(c.revoked_at.is_(None), c.revoked_at > c.expires_at),
            )
            .order_by(c.expires_at, c.username)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [rows.account(r) for r in await conn.execute(query)]

    async def report_expired_accounts(self, reports: Sequence[tuple[str, Event]], at: dt.datetime) -> int:
        """Mark each account's expiry reported and store its event, in one transaction; an account already
        reported (by another sweep) gets no second event. How many were reported now."""
        c = t.sftp_accounts.c
        stored: list[Event] = []
        async with begin_write(self.engine) as conn:
            for username, event in reports:
                marked = await conn.execute(
                    sa.update(t.sftp_accounts)
                    .where(c.username == username, c.expiry_reported_at.is_(None))
                    .values(expiry_reported_at=at)
                )
                if marked.rowcount:
                    stored.append(event)
            await append_events(conn, stored)
        return len(stored)

    async def file_totals(self, case_id: str) -> tuple[int, int]:
        """How many files the case has, and their bytes (for lifecycle events: counts, never names)."""
        f = t.files.c
        query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(f.size), 0)).where(
            f.case_id == case_id
        )
        async with self.engine.connect() as conn:
            count, size = (await conn.execute(query)).one()
        return int(count), int(size)
