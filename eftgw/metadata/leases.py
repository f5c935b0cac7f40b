"""Leases in the ``leases`` table: who holds a named lock, until when, with which fencing token.

A lease is a row ``(name, holder, fence, expires_at, interrupt)``. Taking a free or expired lease raises its
``fence`` by one (a compare-and-set on the old value, so two nodes racing for it cannot both win); a holder
renews all its leases with one UPDATE per heartbeat; releasing clears ``holder``. The row stays, so the fence
keeps growing across holders: a write that carries an old fence is recognisably stale (see
``SqlRepository.save_progress``). ``interrupt`` is how a newer request asks the current holder to let go.

Expiry is judged by the database's clock (``clock_timestamp()`` on PostgreSQL), never by the nodes' clocks,
so clock skew between nodes cannot make two of them hold one lease. SQLite (one node) uses the local clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from eftgw.metadata.engine import begin_write
from eftgw.metadata.schema import UTCDateTime, leases, uploads


@dataclass(frozen=True)
class Held:
    """A lease a holder still holds after a renewal, and whether someone asked it to let go."""

    name: str
    fence: int
    interrupt: bool


class Leases:
    """The SQL of leases. ``ttl`` is how long a lease lives without renewal, in seconds."""

    def __init__(self, engine: AsyncEngine, ttl: float) -> None:
        self.engine = engine
        self.ttl = ttl
        self._postgres = engine.dialect.name == "postgresql"

    def _now(self) -> ColumnElement[dt.datetime]:
        if self._postgres:
            return sa.func.clock_timestamp(type_=UTCDateTime())
        return sa.literal(dt.datetime.now(dt.UTC), UTCDateTime())

    def _until(self) -> ColumnElement[dt.datetime]:
        if self._postgres:
            return sa.func.clock_timestamp(type_=UTCDateTime()) + sa.literal(
                dt.timedelta(seconds=self.ttl), sa.Interval()
            )
        return sa.literal(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.ttl), UTCDateTime())

    async def acquire(self, name: str, holder: str, *, interrupt: bool) -> int | None:
        """Take the lease if it is free or expired and return the new fence; else ``None``.

        With ``interrupt``, a lease held by someone else is flagged so that its holder lets go soon.
        """
        try:
            async with begin_write(self.engine) as conn:
                query = sa.select(
                    leases.c.fence, leases.c.holder, leases.c.interrupt, (leases.c.expires_at <= self._now())
                ).where(leases.c.name == name)
                if self._postgres:
                    query = query.with_for_update()
                row = (await conn.execute(query)).first()
                if row is None:
                    await conn.execute(
                        sa.insert(leases).values(
                            name=name, holder=holder, fence=1, expires_at=self._until(), interrupt=False
                        )
                    )
                    return 1
                fence, current, flagged, expired = row
                mine = leases.c.name == name, leases.c.fence == fence
                if current is None or expired:
                    taken = await conn.execute(
                        sa.update(leases)
                        .where(*mine)
                        .values(holder=holder, fence=fence + 1, expires_at=self._until(), interrupt=False)
                    )
                    return fence + 1 if taken.rowcount == 1 else None
                if interrupt and not flagged:
                    await conn.execute(sa.update(leases).where(*mine).values(interrupt=True))
                return None
        except IntegrityError:  # another node inserted the row first
            return None

    async def renew(self, holder: str, name: str | None = None) -> list[Held]:
        """Extend every unexpired lease of ``holder`` (or only ``name``); return those it still holds."""
        condition = [leases.c.holder == holder, leases.c.expires_at > self._now()]
        if name is not None:
            condition.append(leases.c.name == name)
        statement = (
            sa.update(leases)
            .where(*condition)
            .values(expires_at=self._until())
            .returning(leases.c.name, leases.c.fence, leases.c.interrupt)
        )
        async with begin_write(self.engine) as conn:
            rows = list(await conn.execute(statement))
        return [Held(r.name, r.fence, bool(r.interrupt)) for r in rows]

    async def release(self, name: str, fence: int) -> None:
        """Let go of the lease if it is still ours (its fence unchanged)."""
        async with begin_write(self.engine) as conn:
            await conn.execute(
                sa.update(leases)
                .where(leases.c.name == name, leases.c.fence == fence)
                .values(holder=None, interrupt=False, expires_at=self._now())
            )

    async def forget_upload(self, name: str, upload_id: str) -> None:
        """Drop the released lease of an upload that no longer exists (nobody can write to it any more)."""
        gone = ~sa.exists().where(uploads.c.id == upload_id)
        async with begin_write(self.engine) as conn:
            await conn.execute(
                sa.delete(leases).where(leases.c.name == name, leases.c.holder.is_(None), gone)
            )
