"""SFTP ``stat`` and ``open`` of one name cost the same in a case of thousands of files and uploads as in an
empty one: they look the name up (indexed queries) instead of listing the case."""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sftp_support import GatewayThread, paramiko_sftp, wait_until

from eftgw.metadata import rows
from eftgw.metadata import schema as t
from eftgw.model import FileRecord, Transport

MANY = 5000


class Reads:
    """Counts the SQL statements that read files or uploads, and the file and upload rows turned into objects
    (the session's periodic checks of its account and case are not counted)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statements = 0
        self.rows = 0

    def reset(self) -> None:
        with self.lock:
            self.statements = self.rows = 0

    def statement(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and re.search(
            r"FROM (files|uploads)\b", statement
        ):
            with self.lock:
                self.statements += 1

    def counting(self, convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def wrapper(row: Any) -> Any:
            with self.lock:
                self.rows += 1
            return convert(row)

        return wrapper


@pytest.fixture
def reads(gateway: GatewayThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    counter = Reads()
    monkeypatch.setattr(rows, "file", counter.counting(rows.file))
    monkeypatch.setattr(rows, "upload", counter.counting(rows.upload))
    engine = gateway.gw.repo.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", counter.statement)
    yield counter
    sa.event.remove(engine, "before_cursor_execute", counter.statement)


def _fill(gateway: GatewayThread, case_id: str, count: int) -> None:
    """``count`` completed files and ``count`` SFTP uploads in progress, inserted in one transaction each."""
    now = dt.datetime.now(dt.UTC)
    files = [
        rows.values(
            t.files,
            FileRecord(
                id=f"f{case_id}{i}",
                case_id=case_id,
                name=f"file-{i}.log",
                size=1,
                sha256="0" * 64,
                xxh128="0" * 32,
                object_key=f"cases/{case_id}/f{i}",
                uploaded_at=now,
                uploaded_by="alice",
                source="customer",
                via=Transport.SFTP,
            ),
        )
        for i in range(count)
    ]
    uploads = [
        {
            "id": f"u{case_id}{i}",
            "case_id": case_id,
            "file_id": f"g{case_id}{i}",
            "name": f"upload-{i}.log",
            "length": None,
            "offset": 0,
            "state": "active",
            "created_at": now,
            "updated_at": now,
            "expires_at": now + dt.timedelta(days=1),
            "created_by": "alice",
            "source": "customer",
            "via": "sftp",
            "staging_key": f"uploads/{case_id}/u{i}",
            "metadata": {},
            "concat": "none",
            "partials": [],
            "content_type": "application/octet-stream",
        }
        for i in range(count)
    ]

    async def insert() -> None:
        async with gateway.gw.repo.engine.begin() as conn:
            if files:
                await conn.execute(sa.insert(t.files), files)
            if uploads:
                await conn.execute(sa.insert(t.uploads), uploads)

    gateway.call(insert())


def _cost(reads: Reads, action: Callable[[], object]) -> tuple[int, int]:
    reads.reset()
    action()
    with reads.lock:
        return reads.statements, reads.rows


def test_stat_and_open_cost_does_not_grow_with_the_case(gateway: GatewayThread, reads: Reads) -> None:
    """In a case of 5,000 files and 5,000 uploads in progress, ``stat`` of a file, of an upload, of a
    missing name, and ``open`` + read of a file run as many statements as in a case holding only the
    names asked for, and turn at most a few rows into objects (the case is never listed)."""
    costs: dict[str, list[tuple[int, int]]] = {}
    for case_id, extra in (("SMALL", 0), ("BIG", MANY)):
        account = gateway.account(case_id)
        gateway.place_engineer_file("target.log", b"hello", case_id)
        with paramiko_sftp(gateway.port, account) as (_t, sftp), sftp.open("pending.bin", "w") as pending:
            pending.write(b"x")
            pending.flush()
            wait_until(lambda c=case_id: [u.offset for u in gateway.active_uploads(c)] == [1])  # committed
            _fill(gateway, case_id, extra)  # after the upload: the fill goes past the quota of uploads

            def stat_missing() -> None:
                with pytest.raises(FileNotFoundError):
                    sftp.stat("nothing.here")

            operations: list[tuple[str, Callable[[], object]]] = [
                ("stat file", lambda: sftp.stat("target.log")),
                ("stat upload", lambda: sftp.stat("pending.bin")),
                ("stat missing", stat_missing),
                ("open file", lambda: sftp.open("target.log").read()),
            ]
            for label, action in operations:
                costs.setdefault(label, []).append(_cost(reads, action))
    for label, ((small_statements, _), (big_statements, big_rows)) in costs.items():
        assert big_statements == small_statements, (label, costs)
        assert big_rows <= 3, (label, costs)
