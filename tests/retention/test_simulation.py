"""A randomised 90-day simulation: after every daily sweep exactly the due cases are gone, nothing else is
touched, and the storage listing agrees with the metadata."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from pathlib import Path

from eftgw.clock import FixedClock
from eftgw.config import Settings
from eftgw.gateway import Gateway
from eftgw.model import SYSTEM, Principal, Role
from eftgw.retention.policy import due_purges
from eftgw.retention.worker import sweep
from tests.support import backend, settings_for

START = dt.datetime(2026, 1, 1, 9, 0, tzinfo=dt.UTC)
RETENTION = dt.timedelta(days=30)


@dataclass
class Expected:
    """What the model says of a case: its state, closure time and the files it must still have."""

    state: str = "open"
    closed_at: dt.datetime | None = None
    files: set[str] = field(default_factory=set)


async def body(data: bytes):
    yield data


async def check_agreement(gw: Gateway, model: dict[str, Expected]) -> None:
    """Metadata equals the model, and the store holds exactly the objects of the files in the metadata."""
    cases = {c.id: c for c in await gw.repo.list_cases()}
    assert set(cases) == {cid for cid, e in model.items() if e.state != "purged"}
    expected_keys: set[str] = set()
    for case_id, case in cases.items():
        expected = model[case_id]
        assert case.state.value == expected.state
        assert case.closed_at == expected.closed_at
        files = await gw.repo.list_files(case_id)
        assert {f.id for f in files} == expected.files
        expected_keys |= {f.object_key for f in files}
    stored = {k for k in await gw.store.list_keys("cases/") if not k.endswith(".tags.json")}
    assert stored == expected_keys
    assert await gw.store.list_keys("uploads/") == []


async def test_ninety_random_days(tmp_path: Path) -> None:
    """Random opens, uploads, closures and reopenings; daily sweeps purge exactly the due cases."""
    rng = random.Random(20261126)
    # Against a real S3 server every upload costs several round trips: fewer cases, the same 90 days.
    new_cases, upload_chance = (3, 0.3) if backend() == "embedded" else (1, 0.12)
    clock = FixedClock(START)
    settings: Settings = settings_for(tmp_path / "sim")
    gw = Gateway.build(settings, clock)
    await gw.start()
    model: dict[str, Expected] = {}
    purges = 0
    try:
        for day in range(90):
            for _ in range(rng.randint(0, new_cases)):
                case_id = f"SIM-{len(model) + 1}"
                await gw.cases.open(SYSTEM, case_id)
                model[case_id] = Expected()
            for case_id, expected in model.items():
                clock.at = START + dt.timedelta(days=day, minutes=rng.randint(0, 600))
                roll = rng.random()
                if expected.state == "open" and roll < upload_chance:
                    customer = Principal("cust", Role.CUSTOMER, case_id)
                    data = rng.randbytes(rng.randint(0, 2048))
                    upload = await gw.uploads.create(
                        customer, case_id, length=len(data), metadata={"filename": "f"}
                    )
                    if data:
                        upload = await gw.uploads.append(customer, case_id, upload.id, 0, body(data))
                    expected.files.add(upload.file_id)
                elif expected.state == "open" and roll < upload_chance + 0.1:
                    back = dt.timedelta(hours=rng.randint(0, 48))
                    closed = await gw.cases.close(SYSTEM, case_id, clock.now() - back)
                    expected.state, expected.closed_at = "closed", closed.closed_at
                elif expected.state == "closed" and roll < 0.08:
                    await gw.cases.reopen(SYSTEM, case_id)
                    expected.state, expected.closed_at = "open", None
                elif expected.state == "purged" and roll < 0.05:
                    await gw.cases.reopen(SYSTEM, case_id)
                    model[case_id] = Expected()
            clock.at = START + dt.timedelta(days=day, hours=23)
            cases = await gw.repo.list_cases()
            due = {d.case_id for d in due_purges(cases, clock.now(), RETENTION)}
            result = await sweep(gw.retention)
            assert {p.case_id for p in result.purged} == due
            assert result.failed == {}
            for case_id in due:
                model[case_id] = Expected(state="purged")
            purges += len(due)
            await check_agreement(gw, model)
        states = [e.state for e in model.values()]
        assert purges >= 3 and states.count("open") >= 3  # the run exercised both sides
    finally:
        await gw.close()
