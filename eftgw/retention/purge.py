"""Purging cases: everything of them goes, through the same core services as a user's delete, a listing
proves nothing is left in storage, and the audit trail says what went (one ``file.deleted`` per file, one
``case.purged`` per case, no file names).

Retention sits between the composition root and the services: it is handed a :class:`Retention` (built by
:mod:`eftgw.gateway` from the services) and imports neither the composition root nor any adapter, so it
takes the paths a user's delete takes and nothing else (import-linter checks this).

A purge works on a batch of due cases, so that its cost is not one fsynced transaction per file:

1. claim the whole batch in one transaction (``closed`` → ``purging``, each only if its closure is still the
   one that made it due, so a reopening in the meantime wins, exactly as a claim of one case would);
2. for each claimed case (a few at a time): discard its unfinished uploads, delete every file's object
   (:meth:`FileService.purge_objects`), list its store prefixes, remove any leftover and list again;
3. delete the rows of every case whose store is empty, record all their audit events and one
   ``case.purged`` integration event per case (counts and bytes, no names), and scrub their earlier
   integration events (delivered and dead ones go, pending ones lose their file names), in ONE transaction
   (:meth:`CaseService.remove_purged`).

A case whose storage cleanup fails is left out of step 3: it stays ``purging`` with its rows, and the next
sweep does it again (deleting an object twice is harmless), without holding back the rest of its batch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from eftgw.accounts import AccountService
from eftgw.audit import AuditLog
from eftgw.auth import AuthService
from eftgw.cases import CaseService
from eftgw.clock import Clock, isoformat
from eftgw.errors import DomainError
from eftgw.events import Event, EventFactory
from eftgw.files import FileService
from eftgw.model import AuditEvent, FileRecord, SystemPrincipal, Upload
from eftgw.ports import EventRepository
from eftgw.uploads import UploadService

log = logging.getLogger("eftgw.retention")

RETENTION = SystemPrincipal(user="retention")


class PurgeIncomplete(DomainError):
    code = "purge_incomplete"
    status = 500
    default_message = "Some data of the case could not be removed; the purge will be retried."


@dataclass
class Retention:
    """What retention needs, injected by the composition root: the core services and the period."""

    cases: CaseService
    files: FileService
    uploads: UploadService
    auth: AuthService
    audit: AuditLog
    clock: Clock
    period: dt.timedelta
    accounts: AccountService
    events: EventFactory
    outbox: EventRepository  # the sweep prunes old delivered and dead events
    batch_size: int = 500  # cases per claim and per commit
    concurrency: int = 8  # cases whose storage is cleaned at once


@dataclass
class PurgeReport:
    case_id: str
    closed_at: dt.datetime | None
    files: list[dict[str, object]] = field(default_factory=list)
    bytes: int = 0
    uploads: int = 0
    leftovers: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "case_id": self.case_id,
            "closed_at": isoformat(self.closed_at) if self.closed_at else None,
            "files": len(self.files),
            "bytes": self.bytes,
            "unfinished_uploads": self.uploads,
            "leftover_objects": self.leftovers,
            "file_ids": [f["id"] for f in self.files],
        }


@dataclass
class BatchOutcome:
    purged: list[PurgeReport] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


async def clear_storage(
    retention: Retention,
    case_id: str,
    closed_at: dt.datetime | None,
    files: Sequence[FileRecord],
    uploads: Sequence[Upload],
) -> tuple[PurgeReport, list[AuditEvent]]:
    """Remove everything the store holds of a claimed case (``files`` and ``uploads`` are its rows); its
    report and the events of its files. Raises :class:`PurgeIncomplete` if a listing afterwards still shows
    data of the case."""
    report = PurgeReport(case_id, closed_at)
    report.uploads = await retention.uploads.discard_case(RETENTION, case_id, uploads)
    events = await retention.files.purge_objects(RETENTION, files)
    for record in files:
        report.files.append({"id": record.id, "sha256": record.sha256, "size": record.size})
        report.bytes += record.size
    report.leftovers, remaining = await retention.files.purge_leftovers(RETENTION, case_id)
    if remaining:
        raise PurgeIncomplete(f"{len(remaining)} objects of case {case_id} remain after the purge.")
    events.append(
        retention.audit.event(
            "case.purged",
            RETENTION,
            case_id,
            closed_at=isoformat(closed_at) if closed_at else None,
            files=len(report.files),
            bytes=report.bytes,
            unfinished_uploads=report.uploads,
            leftover_objects=report.leftovers,
            file_ids=[f["id"] for f in report.files],
            sha256=[f["sha256"] for f in report.files],
        )
    )
    return report, events


async def purge_batch(retention: Retention, due: Sequence[tuple[str, dt.datetime | None]]) -> BatchOutcome:
    """Purge the cases of ``(case_id, closed_at)`` still closed since then, or already purging (see the
    module docstring): two transactions for the whole batch, whatever the number of files."""
    outcome = BatchOutcome()
    closed_at = dict(due)
    claimed = await retention.cases.claim_for_purge(RETENTION, due)
    files = await retention.files.of_cases(RETENTION, claimed)
    uploads = await retention.uploads.of_cases(RETENTION, claimed)
    gate = asyncio.Semaphore(retention.concurrency)

    async def clear(case_id: str) -> tuple[PurgeReport, list[AuditEvent]]:
        async with gate:
            return await clear_storage(
                retention, case_id, closed_at[case_id], files[case_id], uploads[case_id]
            )

    results = await asyncio.gather(*(clear(c) for c in claimed), return_exceptions=True)
    events: list[AuditEvent] = []
    purged: list[Event] = []
    for case_id, result in zip(claimed, results, strict=True):
        if isinstance(result, Exception):
            log.error("purge of case %s failed; it stays purging and is retried", case_id, exc_info=result)
            outcome.failed[case_id] = str(getattr(result, "message", "")) or type(result).__name__
            continue
        if isinstance(result, BaseException):  # cancelled: stop, the claimed cases are retried later
            raise result
        report, case_events = result
        outcome.purged.append(report)
        events.extend(case_events)
        purged.append(
            retention.events.make("case.purged", case_id, files=len(report.files), bytes=report.bytes)
        )
    if outcome.purged:
        await retention.cases.remove_purged(RETENTION, [r.case_id for r in outcome.purged], events, purged)
    return outcome


async def purge_case(retention: Retention, case_id: str, closed_at: dt.datetime | None) -> PurgeReport | None:
    """Purge one case if it is still closed since ``closed_at`` (or already being purged); else ``None``."""
    outcome = await purge_batch(retention, [(case_id, closed_at)])
    if case_id in outcome.failed:
        raise PurgeIncomplete(outcome.failed[case_id])
    return outcome.purged[0] if outcome.purged else None


__all__ = [
    "RETENTION",
    "BatchOutcome",
    "PurgeIncomplete",
    "PurgeReport",
    "Retention",
    "clear_storage",
    "purge_batch",
    "purge_case",
]
