"""The retention policy as pure functions of the cases and the time: no I/O, no clock of its own."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from eftgw.model import Case


@dataclass(frozen=True)
class DuePurge:
    case_id: str
    closed_at: dt.datetime
    due_at: dt.datetime


def due_at(case: Case, retention: dt.timedelta) -> dt.datetime | None:
    """When the case's data is to be purged, or ``None`` while it is open (:meth:`Case.purge_due_at`)."""
    return case.purge_due_at(retention)


def due_purges(cases: Iterable[Case], now: dt.datetime, retention: dt.timedelta) -> list[DuePurge]:
    """The closed cases whose retention period has ended at ``now``, oldest first."""
    due = []
    for case in cases:
        when = due_at(case, retention)
        if when is not None and when <= now and case.closed_at is not None:
            due.append(DuePurge(case.id, case.closed_at, when))
    return sorted(due, key=lambda d: (d.due_at, d.case_id))


def oldest_overdue(cases: Iterable[Case], now: dt.datetime, retention: dt.timedelta) -> dt.timedelta:
    """How long the most overdue purge has been waiting (zero when nothing is due): an alerting signal."""
    due = due_purges(cases, now, retention)
    return max((now - d.due_at for d in due), default=dt.timedelta(0))
