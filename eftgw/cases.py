"""CaseService: the lifecycle of a case as the case system reports it (open, close, reopen)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eftgw.audit import AuditLog
from eftgw.clock import Clock, isoformat
from eftgw.errors import CaseClosed, CaseNotFound, Conflict, Forbidden
from eftgw.events import Event, EventFactory
from eftgw.ids import check_case_id
from eftgw.model import AuditEvent, Case, CaseState, Principal, SystemPrincipal
from eftgw.ports import CaseRepository


@dataclass
class CaseView:
    """A case as its users see it: its state and, once closed, when its data will be purged."""

    case: Case
    purge_due_at: dt.datetime | None

    def as_json(self) -> dict[str, Any]:
        """The case as the HTTP API and the CLI print it (one shape for both)."""
        case = self.case
        return {
            "id": case.id,
            "state": case.state.value,
            "opened_at": isoformat(case.opened_at),
            "closed_at": isoformat(case.closed_at) if case.closed_at else None,
            "purge_due_at": isoformat(self.purge_due_at) if self.purge_due_at else None,
        }


class CaseService:
    def __init__(
        self,
        repo: CaseRepository,
        clock: Clock,
        audit: AuditLog,
        retention: dt.timedelta,
        *,
        events: EventFactory,
    ) -> None:
        self.repo = repo
        self.clock = clock
        self.audit = audit
        self.retention = retention
        self.events = events
        # Called after a case closes (e.g. to revoke its SFTP accounts); errors propagate to the caller.
        self.on_closed: list[Callable[[Principal, str], Awaitable[object]]] = []

    async def get(self, case_id: str) -> Case:
        case = await self.repo.get_case(check_case_id(case_id))
        if case is None:
            raise CaseNotFound()
        return case

    async def view(self, principal: Principal, case_id: str) -> CaseView:
        if not principal.may_access_case(case_id):
            raise CaseNotFound()
        return self.view_of(await self.get(case_id))

    def view_of(self, case: Case) -> CaseView:
        """The view of a case already read (no access check: the caller has made it)."""
        return CaseView(case, case.purge_due_at(self.retention))

    async def require_open(self, case_id: str) -> Case:
        """The case, if files may be transferred to it now; :class:`CaseClosed` otherwise."""
        case = await self.get(case_id)
        if case.state is not CaseState.OPEN:
            raise CaseClosed()
        return case

    @staticmethod
    def _not_purging(case: Case | None) -> None:
        if case is not None and case.state is CaseState.PURGING:
            raise Conflict("The case's data is being purged right now; try again in a minute.")

    async def open(self, principal: Principal, case_id: str) -> Case:
        """Open a case; opening an open case changes nothing, opening a closed one reopens it."""
        check_case_id(case_id)
        case = await self.repo.get_case(case_id)
        self._not_purging(case)
        if case is not None and case.state is CaseState.OPEN:
            return case
        if case is not None:
            return await self.reopen(principal, case_id)
        now = self.clock.now()
        case = Case(id=case_id, state=CaseState.OPEN, opened_at=now, updated_at=now)
        await self.repo.save_case(case)
        await self.audit.record("case.opened", principal, case_id)
        return case

    async def close(self, principal: Principal, case_id: str, at: dt.datetime | None = None) -> Case:
        """Close a case: no transfers from now on. ``at`` records an earlier closure time (imports)."""
        now = self.clock.now()
        closed_at = at or now
        if closed_at > now:
            raise Forbidden("A case cannot be closed in the future.")
        case = await self.get(case_id)
        self._not_purging(case)
        if case.state is CaseState.CLOSED and at is None:
            return case
        case.state = CaseState.CLOSED
        case.closed_at = closed_at
        case.updated_at = now
        await self.repo.save_case(case, [await self._lifecycle("case.closed", case_id)])
        await self.audit.record("case.closed", principal, case_id, closed_at=closed_at.isoformat())
        for listener in self.on_closed:
            await listener(principal, case_id)
        return case

    async def reopen(self, principal: Principal, case_id: str) -> Case:
        """Reopen a case: its data is kept and its purge cancelled. An unknown (purged) case opens empty."""
        check_case_id(case_id)
        case = await self.repo.get_case(case_id)
        self._not_purging(case)
        now = self.clock.now()
        if case is None:
            case = Case(id=case_id, state=CaseState.OPEN, opened_at=now, updated_at=now)
        elif case.state is CaseState.OPEN:
            return case
        else:
            case.state = CaseState.OPEN
            case.closed_at = None
            case.updated_at = now
        await self.repo.save_case(case, [await self._lifecycle("case.reopened", case_id)])
        await self.audit.record("case.reopened", principal, case_id)
        return case

    async def _lifecycle(self, type: str, case_id: str) -> Event:
        """A lifecycle event of the case: how many files it holds and their bytes, never their names."""
        files, size = await self.repo.file_totals(case_id)
        return self.events.make(type, case_id, files=files, bytes=size)

    # retention -------------------------------------------------------------------------------------

    async def in_state(self, state: CaseState) -> list[Case]:
        """Every case in ``state`` (what the retention sweep plans from)."""
        return await self.repo.list_cases(state)

    async def claim_for_purge(
        self, principal: SystemPrincipal, due: Sequence[tuple[str, dt.datetime | None]]
    ) -> list[str]:
        """Move each case still closed since its ``closed_at`` (or already purging) to ``purging``, in one
        transaction; the ids claimed. A case reopened or closed again since is left out: a reopening wins,
        and once a case is ``purging`` it can be neither reopened nor closed until its purge ends."""
        if not isinstance(principal, SystemPrincipal):  # a caller outside the type checker's sight
            raise Forbidden("Only the gateway's retention may purge cases.")
        return await self.repo.claim_cases_for_purge(due)

    async def remove_purged(
        self,
        principal: SystemPrincipal,
        case_ids: Sequence[str],
        events: Sequence[AuditEvent],
        integration: Sequence[Event] = (),
    ) -> None:
        """Delete every row of these purged cases and record ``events`` (their audit) and ``integration``
        (their ``case.purged`` events) in one transaction; the outbox keeps no file name of them."""
        if not isinstance(principal, SystemPrincipal):
            raise Forbidden("Only the gateway's retention may purge cases.")
        await self.repo.delete_purged_cases(case_ids, events, integration)
        for event in events:
            self.audit.logged(event)
