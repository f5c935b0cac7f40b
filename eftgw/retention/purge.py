"""Purging a case: everything of it goes, through the same services as a user's delete, then a listing
proves nothing is left, and an audit record (no file names) says it happened.

Order: claim the case (``closed`` → ``purging``, only if its closure is still the one that made it due, so
a reopening in the meantime wins); discard unfinished uploads (staging data, multipart parts); delete every
file through :meth:`FileService.delete`; list the case's prefixes in the store and remove any leftover;
delete the rows (files, uploads, sessions, SFTP accounts, the case); record ``case.purged``. A failure leaves
the case ``purging`` and the next sweep finishes the job; nothing is skipped silently.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from eftgw.clock import isoformat
from eftgw.errors import DomainError
from eftgw.gateway import Gateway
from eftgw.model import CaseState, SystemPrincipal
from eftgw.storage import object_key, staging_key

log = logging.getLogger("eftgw.retention")

RETENTION = SystemPrincipal(user="retention")


class PurgeIncomplete(DomainError):
    code = "purge_incomplete"
    status = 500
    default_message = "Some data of the case could not be removed; the purge will be retried."


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


def case_prefixes(case_id: str) -> list[str]:
    """Every store prefix that can hold data of the case (objects and staging)."""
    return [object_key(case_id, ""), staging_key(case_id, "")]


async def purge_case(gateway: Gateway, case_id: str, closed_at: dt.datetime | None) -> PurgeReport | None:
    """Purge one case if it is still closed since ``closed_at`` (or already being purged); else ``None``."""
    if not await gateway.repo.claim_case_for_purge(case_id, closed_at):
        return None
    report = PurgeReport(case_id, closed_at)
    report.uploads = await gateway.uploads.discard_case(RETENTION, case_id)
    for record in await gateway.repo.list_files(case_id):
        await gateway.files.purge(RETENTION, case_id, record.id)
        report.files.append({"id": record.id, "sha256": record.sha256, "size": record.size})
        report.bytes += record.size
    for prefix in case_prefixes(case_id):
        for key in await gateway.store.list_keys(prefix):
            log.warning("purge of %s: removing leftover %s", case_id, key)
            await gateway.store.delete_object(key)
            await gateway.store.delete_staging(key)
            report.leftovers += 1
    remaining = [key for prefix in case_prefixes(case_id) for key in await gateway.store.list_keys(prefix)]
    if remaining:
        raise PurgeIncomplete(f"{len(remaining)} objects of case {case_id} remain after the purge.")
    await gateway.repo.delete_case_rows(case_id)
    await gateway.audit.record(
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
    return report


__all__ = ["RETENTION", "CaseState", "PurgeIncomplete", "PurgeReport", "case_prefixes", "purge_case"]
