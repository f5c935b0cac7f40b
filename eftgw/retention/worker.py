"""The retention sweep: purge every due case, expire idle uploads, and report; run by ``serve``
periodically and by ``eftgw retention run`` once (optionally as of another time, or as a dry run)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from eftgw import metrics
from eftgw.clock import isoformat
from eftgw.gateway import Gateway
from eftgw.model import CaseState
from eftgw.retention.policy import DuePurge, due_purges, oldest_overdue
from eftgw.retention.purge import RETENTION, PurgeReport, purge_case

log = logging.getLogger("eftgw.retention")


@dataclass
class SweepResult:
    now: str
    dry_run: bool
    due: list[DuePurge] = field(default_factory=list)
    purged: list[PurgeReport] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    expired_uploads: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "dry_run": self.dry_run,
            "due": [
                {"case_id": d.case_id, "closed_at": isoformat(d.closed_at), "due_at": isoformat(d.due_at)}
                for d in self.due
            ],
            "purged": [p.as_json() for p in self.purged],
            "failed": self.failed,
            "expired_uploads": self.expired_uploads,
        }


async def plan(gateway: Gateway) -> list[DuePurge]:
    """What is due now: closed cases past their period, and purges an earlier sweep did not finish."""
    now = gateway.clock.now()
    retention = gateway.cases.retention
    closed = await gateway.repo.list_cases(CaseState.CLOSED)
    purging = await gateway.repo.list_cases(CaseState.PURGING)
    metrics.OLDEST_OVERDUE.set(oldest_overdue([*closed, *purging], now, retention).total_seconds())
    return due_purges([*purging, *closed], now, retention)


async def sweep(gateway: Gateway, *, dry_run: bool = False) -> SweepResult:
    """Apply the retention rules once, as of the gateway's clock. Failures are reported and retried later."""
    result = SweepResult(now=isoformat(gateway.clock.now()), dry_run=dry_run)
    result.due = await plan(gateway)
    if dry_run:
        return result
    for due in result.due:
        try:
            report = await purge_case(gateway, due.case_id, due.closed_at)
        except Exception as exc:
            log.exception("purge of case %s failed; it will be retried", due.case_id)
            metrics.PURGE_FAILURES.inc()
            result.failed[due.case_id] = str(getattr(exc, "message", "")) or type(exc).__name__
            continue
        if report is None:
            continue  # reopened or closed again since the plan was made
        result.purged.append(report)
        metrics.PURGED_CASES.inc()
        metrics.PURGED_FILES.inc(len(report.files))
        metrics.PURGED_BYTES.inc(report.bytes)
        log.info("purged case %s: %d files, %d bytes", due.case_id, len(report.files), report.bytes)
    result.expired_uploads = await gateway.uploads.sweep_expired(RETENTION)
    await gateway.repo.delete_expired(gateway.clock.now())
    metrics.OLDEST_OVERDUE.set(
        oldest_overdue(
            await gateway.repo.list_cases(CaseState.CLOSED), gateway.clock.now(), gateway.cases.retention
        ).total_seconds()
    )
    return result
