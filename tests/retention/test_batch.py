"""The batched purge: a case whose storage cannot be cleaned stays ``purging`` (and is finished by a later
sweep) while the rest of its batch is purged, and the audit trail holds exactly one ``file.deleted`` per
file and one ``case.purged`` per case."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from eftgw.clock import FixedClock
from eftgw.gateway import Gateway
from eftgw.model import SYSTEM, CaseState, Principal, Role
from eftgw.retention.purge import RETENTION
from eftgw.retention.worker import sweep
from eftgw.storage import ObjectStore
from eftgw.storage.base import StorageError
from tests.support import settings_for

START = dt.datetime(2026, 1, 1, 9, 0, tzinfo=dt.UTC)


async def body(data: bytes):
    yield data


class FailingDeletes:
    """The gateway's store, except that deleting an object under ``prefix`` fails (a storage outage)."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def delete_object(self, key: str) -> None:
        if key.startswith(self.prefix):
            raise StorageError(f"injected failure deleting {key}")
        await self.store.delete_object(key)

    async def delete_objects(self, keys: list[str]) -> None:
        for key in keys:
            await self.delete_object(key)


async def case_with_files(gw: Gateway, case_id: str, count: int) -> list[str]:
    await gw.cases.open(SYSTEM, case_id)
    customer = Principal("cust", Role.CUSTOMER, case_id)
    ids = []
    for n in range(count):
        data = f"{case_id} file {n}".encode()
        upload = await gw.uploads.create(
            customer, case_id, length=len(data), metadata={"filename": f"{n}.log"}
        )
        upload = await gw.uploads.append(customer, case_id, upload.id, 0, body(data))
        assert upload.file_id is not None
        ids.append(upload.file_id)
    await gw.cases.close(SYSTEM, case_id)
    return ids


async def stored(gw: Gateway, case_id: str) -> list[str]:
    return await gw.store.list_keys(f"cases/{case_id}/") + await gw.store.list_keys(f"uploads/{case_id}/")


async def test_a_failed_case_stays_purging_and_the_rest_of_its_batch_is_purged(tmp_path: Path) -> None:
    """Deleting one case's objects fails: that case stays ``purging`` with its rows and no purge events, the
    other cases of the same batch are purged completely; the next sweep finishes it, one event per file."""
    clock = FixedClock(START)
    gw = Gateway.build(settings_for(tmp_path / "batch"), clock)
    await gw.start()
    try:
        files = {case_id: await case_with_files(gw, case_id, 3) for case_id in ("B-1", "B-2", "B-3")}
        clock.advance(dt.timedelta(days=31))
        gw.files.store = FailingDeletes(gw.store, "cases/B-2/")  # type: ignore[assignment]
        first = await sweep(gw.retention)
        assert sorted(p.case_id for p in first.purged) == ["B-1", "B-3"]
        assert set(first.failed) == {"B-2"}
        failed = await gw.cases.get("B-2")
        assert failed.state is CaseState.PURGING
        assert {f.id for f in await gw.repo.list_files("B-2")} == set(files["B-2"])
        assert not [e for e in await gw.repo.list_audit("B-2") if e.action in ("file.deleted", "case.purged")]
        for case_id in ("B-1", "B-3"):
            assert await gw.repo.get_case(case_id) is None
            assert await stored(gw, case_id) == []
        gw.files.store = gw.store  # storage is back
        second = await sweep(gw.retention)
        assert [p.case_id for p in second.purged] == ["B-2"] and second.failed == {}
        assert await gw.repo.get_case("B-2") is None and await stored(gw, "B-2") == []
        for case_id, file_ids in files.items():
            events = await gw.repo.list_audit(case_id)
            deleted = [e for e in events if e.action == "file.deleted"]
            assert sorted(e.target or "" for e in deleted) == sorted(file_ids)  # one per file, no repeat
            assert all(e.actor == "retention" and e.detail["reason"] == "retention" for e in deleted)
            (purged,) = [e for e in events if e.action == "case.purged"]
            assert purged.detail["files"] == 3 and sorted(purged.detail["file_ids"]) == sorted(file_ids)
    finally:
        await gw.close()


async def test_a_case_reopened_after_the_plan_is_not_claimed(tmp_path: Path) -> None:
    """The batch claim keeps the reopen rule: a case reopened (and closed again) after it became due is
    left alone with its files, while the rest of the batch is purged."""
    clock = FixedClock(START)
    gw = Gateway.build(settings_for(tmp_path / "reopen"), clock)
    await gw.start()
    try:
        kept = await case_with_files(gw, "R-1", 2)
        await case_with_files(gw, "R-2", 2)
        clock.advance(dt.timedelta(days=31))
        old = await gw.cases.get("R-1")
        await gw.cases.reopen(SYSTEM, "R-1")
        await gw.cases.close(SYSTEM, "R-1")
        claimed = await gw.cases.claim_for_purge(
            RETENTION,
            [("R-1", old.closed_at), ("R-2", (await gw.cases.get("R-2")).closed_at)],
        )
        assert claimed == ["R-2"]
        assert (await gw.cases.get("R-1")).state is CaseState.CLOSED
        assert {f.id for f in await gw.repo.list_files("R-1")} == set(kept)
    finally:
        await gw.close()
