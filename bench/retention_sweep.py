"""Benchmark: a retention sweep over 10,000 cases with 10 files each on the embedded default.

Populates the metadata and the local store directly (bulk SQL, small object files), then times
(1) a sweep when nothing is due (the planning cost every interval pays), and (2) a sweep as of 31 days after
closure, when every case is due and is purged completely through the core services (in batches: one claim
and one commit of rows and audit events per batch of cases), each case verified by listing.

    .venv/bin/python bench/retention_sweep.py [--cases 10000] [--files 10]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eftgw.clock import FixedClock
from eftgw.config import Settings
from eftgw.gateway import Gateway
from eftgw.metadata import schema as t
from eftgw.retention.worker import sweep
from eftgw.storage import object_key

CLOSED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


async def populate(gw: Gateway, cases: int, files: int) -> None:
    root = gw.settings.resolved_storage_dir
    case_rows, file_rows = [], []
    for c in range(cases):
        case_id = f"B-{c}"
        case_rows.append(
            {"id": case_id, "state": "closed", "opened_at": CLOSED, "closed_at": CLOSED, "updated_at": CLOSED}
        )
        directory = root / "cases" / case_id
        directory.mkdir(parents=True)
        for f in range(files):
            file_id = f"f_{c}_{f}"
            (directory / file_id).write_bytes(b"x" * 100)
            file_rows.append(
                {
                    "id": file_id,
                    "case_id": case_id,
                    "name": f"log-{f}.txt",
                    "size": 100,
                    "sha256": "0" * 64,
                    "xxh128": "0" * 32,
                    "object_key": object_key(case_id, file_id),
                    "content_type": "text/plain",
                    "uploaded_at": CLOSED,
                    "uploaded_by": "bench",
                    "source": "customer",
                    "via": "http",
                    "modified_at": None,
                }
            )
    async with gw.repo.engine.begin() as conn:
        await conn.execute(sa.insert(t.cases), case_rows)
        for i in range(0, len(file_rows), 5000):
            await conn.execute(sa.insert(t.files), file_rows[i : i + 5000])


async def run(cases: int, files: int, data_dir: Path) -> dict[str, object]:
    clock = FixedClock(CLOSED + dt.timedelta(days=10))
    gw = Gateway.build(Settings(data_dir=data_dir), clock)
    await gw.start()
    try:
        await populate(gw, cases, files)
        started = time.perf_counter()
        idle = await sweep(gw.retention)
        idle_seconds = time.perf_counter() - started
        assert idle.purged == []
        clock.at = CLOSED + dt.timedelta(days=31)
        started = time.perf_counter()
        result = await sweep(gw.retention)
        purge_seconds = time.perf_counter() - started
        assert len(result.purged) == cases and not result.failed
        assert await gw.store.list_keys("cases/") == []
        return {
            "cases": cases,
            "files_per_case": files,
            "sweep_nothing_due_seconds": round(idle_seconds, 2),
            "sweep_all_due_seconds": round(purge_seconds, 1),
            "cases_purged_per_second": round(cases / purge_seconds, 1),
            "files_purged_per_second": round(cases * files / purge_seconds, 1),
        }
    finally:
        await gw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=10)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="eftgw-bench-"))
    try:
        print(json.dumps(asyncio.run(run(args.cases, args.files, tmp / "data")), indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
