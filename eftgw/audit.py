"""The audit trail: who did what, when, from where. Every upload, download, deletion and login is recorded."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from eftgw.clock import Clock
from eftgw.events import Event
from eftgw.model import AuditEvent, Principal
from eftgw.ports import AuditRepository

log = logging.getLogger("eftgw.audit")


class AuditLog:
    def __init__(self, repo: AuditRepository, clock: Clock) -> None:
        self.repo = repo
        self.clock = clock

    async def record(
        self,
        action: str,
        principal: Principal,
        case_id: str | None,
        target: str | None = None,
        *,
        integration: Sequence[Event] = (),
        **detail: Any,
    ) -> None:
        """Record an audit event, and ``integration`` events of the same action in the same transaction."""
        event = self.event(action, principal, case_id, target, **detail)
        await self.repo.add_audit(event, integration)
        self.logged(event)

    def event(
        self,
        action: str,
        principal: Principal,
        case_id: str | None,
        target: str | None = None,
        **detail: Any,
    ) -> AuditEvent:
        """An audit event for a caller that stores it in the same transaction as the change it records."""
        return AuditEvent(
            at=self.clock.now(),
            action=action,
            actor=principal.user,
            role=principal.role.value,
            case_id=case_id,
            target=target,
            remote=principal.remote,
            via=principal.via,
            detail=detail,
        )

    @staticmethod
    def logged(event: AuditEvent) -> None:
        """Write a stored event to the log too."""
        log.info(
            "audit action=%s actor=%s role=%s case=%s target=%s remote=%s",
            event.action,
            event.actor,
            event.role,
            event.case_id,
            event.target,
            event.remote,
            extra={"client": event.remote, "case": event.case_id},
        )
