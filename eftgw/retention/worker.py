"""The retention sweep: purge every due case, expire idle uploads, report expired SFTP accounts, prune old
integration events, and report; run by ``serve``
periodically and by ``eftgw retention run`` once (optionally as of another time, or as a dry run).

It is handed a :class:`~eftgw.retention.purge.Retention` (the services, the clock and the period) by the
composition root, and purges the due cases in batches (:func:`~eftgw.retention.purge.purge_batch`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from eftgw import metrics
from eftgw.clock import isoformat
from eftgw.model import CaseState
from eftgw.retention.policy import DuePurge, due_purges, oldest_overdue
from eftgw.retention.purge import RETENTION, PurgeReport, Retention, purge_batch

log = logging.getLogger("eftgw.retention")


@dataclass
class SweepResult:
    now: str
    dry_run: bool
    due: list[DuePurge] = field(default_factory=list)
    purged: list[PurgeReport] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    expired_uploads: int = 0
    expired_accounts: int = 0
    pruned_events: int = 0

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
            "expired_accounts": self.expired_accounts,
            "pruned_events": self.pruned_events,
        }


async def plan(retention: Retention) -> list[DuePurge]:
    """What is due now: closed cases past their period, and purges an earlier sweep did not finish."""
    now = retention.clock.now()
    closed = await retention.cases.in_state(CaseState.CLOSED)
    purging = await retention.cases.in_state(CaseState.PURGING)
    metrics.OLDEST_OVERDUE.set(oldest_overdue([*closed, *purging], now, retention.period).total_seconds())
    return due_purges([*purging, *closed], now, retention.period)


async def sweep(retention: Retention, *, dry_run: bool = False) -> SweepResult:
    """Apply the retention rules once, as of the clock. Failures are reported and retried later."""
    result = SweepResult(now=isoformat(retention.clock.now()), dry_run=dry_run)
    result.due = await plan(retention)
    if dry_run:
        return result
    for start in range(0, len(result.due), retention.batch_size):
        batch = result.due[start : start + retention.batch_size]
        try:
            outcome = await purge_batch(retention, [(d.case_id, d.closed_at) for d in batch])
        except Exception as exc:  # the claim or the commit failed: the whole batch is retried later
            log.exception("purge of %d cases failed; they will be retried", len(batch))
            message = str(getattr(exc, "message", "")) or type(exc).__name__
            outcome_failed = {d.case_id: message for d in batch}
            metrics.PURGE_FAILURES.inc(len(outcome_failed))
            result.failed.update(outcome_failed)
            continue
        metrics.PURGE_FAILURES.inc(len(outcome.failed))
        result.failed.update(outcome.failed)
        for report in outcome.purged:  # a case reopened or closed again since the plan is in neither
            result.purged.append(report)
            metrics.PURGED_CASES.inc()
            metrics.PURGED_FILES.inc(len(report.files))
            metrics.PURGED_BYTES.inc(report.bytes)
            log.info("purged case %s: %d files, %d bytes", report.case_id, len(report.files), report.bytes)
    result.expired_uploads = await retention.uploads.sweep_expired(RETENTION)
    result.expired_accounts = await retention.accounts.report_expired(RETENTION)
    result.pruned_events = await retention.outbox.prune_events(retention.clock.now() - retention.period)
    await retention.auth.forget_expired()
    metrics.OLDEST_OVERDUE.set(
        oldest_overdue(
            await retention.cases.in_state(CaseState.CLOSED), retention.clock.now(), retention.period
        ).total_seconds()
    )
    return result
