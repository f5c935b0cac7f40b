"""The metadata repository, method by method, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from eftgw.metadata import SqlRepository
from eftgw.metadata import schema as t
from eftgw.model import (
    AuditEvent,
    Case,
    CaseState,
    ConcatKind,
    FileRecord,
    Role,
    Session,
    Upload,
    UploadState,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 3, 29, 0, 30, 15, 123456, tzinfo=dt.UTC)  # the night EU clocks go forward


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def make_upload(upload_id: str = "u1", case_id: str = "C-1", **changes: object) -> Upload:
    upload = Upload(
        id=upload_id,
        case_id=case_id,
        file_id="f_" + upload_id,
        name="report.tar.gz",
        length=1000,
        offset=0,
        state=UploadState.ACTIVE,
        created_at=T0,
        updated_at=T0,
        expires_at=at(3600),
        created_by="alice",
        source="customer",
        via="http",
        staging_key=f"uploads/{case_id}/{upload_id}",
        metadata={"filename": "report.tar.gz", "ünï": "cödé"},
        concat=ConcatKind.NONE,
        partials=[],
    )
    for key, value in changes.items():
        setattr(upload, key, value)
    return upload


def make_file(file_id: str = "f_1", case_id: str = "C-1", uploaded_at: dt.datetime = T0) -> FileRecord:
    return FileRecord(
        id=file_id,
        case_id=case_id,
        name="dump.bin",
        size=2**40,
        sha256="ab" * 32,
        xxh128="cd" * 16,
        object_key=f"cases/{case_id}/{file_id}",
        uploaded_at=uploaded_at,
        uploaded_by="alice",
        source="customer",
        via="sftp",
        content_type="application/gzip",
    )


# migrations ----------------------------------------------------------------------------------------------


async def test_migrations_are_idempotent(repo: SqlRepository) -> None:
    """Migrating an up-to-date database again changes nothing and does not fail."""
    await repo.migrate()
    await repo.migrate()
    await repo.save_case(Case("C-1", CaseState.OPEN, T0))
    assert await repo.get_case("C-1") is not None


async def test_migrations_produce_exactly_the_schema_the_queries_use(repo: SqlRepository) -> None:
    """Alembic's own comparison (the one ``alembic check`` runs) finds nothing between the migrated database
    and the table definitions: tables, columns, types, nullability, indexes, unique and foreign keys."""

    def differences(conn: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return [diff for diff in compare_metadata(context, t.metadata) if not _is_alembic_version(diff)]

    async with repo.engine.connect() as conn:
        found = await conn.run_sync(differences)
    assert found == []


def _is_alembic_version(diff: Any) -> bool:
    return bool(diff[0] == "remove_table" and diff[1].name == "alembic_version")


async def test_two_processes_migrating_at_once_both_succeed(database_url: str) -> None:
    """Two nodes starting together on an empty database both migrate it without error."""
    code = "import asyncio, sys; from eftgw.metadata import SqlRepository as R; r = R(sys.argv[1]); "
    code += "asyncio.run(r.migrate()); asyncio.run(r.close())"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, database_url, env=env, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
    for proc, (_out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
    repo = SqlRepository(database_url)
    try:
        await repo.migrate()
        await repo.save_case(Case("C-1", CaseState.OPEN, T0))
        assert [c.id for c in await repo.list_cases()] == ["C-1"]
    finally:
        await repo.close()


# time ----------------------------------------------------------------------------------------------------


async def test_datetimes_come_back_as_the_same_aware_utc_instant(repo: SqlRepository) -> None:
    """A time stored in any zone comes back as the same instant, in UTC, to the microsecond."""
    paris = dt.timezone(dt.timedelta(hours=2))
    opened = dt.datetime(2026, 3, 29, 3, 30, 0, 654321, tzinfo=paris)
    await repo.save_case(Case("C-1", CaseState.CLOSED, opened, closed_at=T0, updated_at=T0))
    case = await repo.get_case("C-1")
    assert case is not None
    assert case.opened_at == opened and case.opened_at.tzinfo == dt.UTC
    assert case.opened_at.hour == 1 and case.opened_at.microsecond == 654321
    assert case.closed_at == T0 and case.closed_at is not None and case.closed_at.tzinfo == dt.UTC


async def test_naive_datetimes_are_refused(repo: SqlRepository) -> None:
    """A datetime without a zone is a programming error and never reaches the database."""
    with pytest.raises(sa.exc.StatementError):
        await repo.save_case(Case("C-1", CaseState.OPEN, dt.datetime(2026, 1, 1)))


async def test_expiry_compares_instants_not_wall_clock_text(repo: SqlRepository) -> None:
    """Expired uploads are found by instant, whatever zone the cutoff is given in."""
    await repo.add_upload(make_upload("u1", expires_at=at(10)))
    await repo.add_upload(make_upload("u2", expires_at=at(20)))
    tokyo = dt.timezone(dt.timedelta(hours=9))
    cutoff = at(15).astimezone(tokyo)
    assert [u.id for u in await repo.list_expired_uploads(cutoff)] == ["u1"]


# cases ---------------------------------------------------------------------------------------------------


async def test_cases_are_saved_listed_and_updated(repo: SqlRepository) -> None:
    """save_case inserts then updates; list_cases filters by state and orders by id."""
    assert await repo.get_case("C-1") is None
    await repo.save_case(Case("C-2", CaseState.OPEN, T0))
    await repo.save_case(Case("C-1", CaseState.OPEN, T0))
    await repo.save_case(Case("C-2", CaseState.CLOSED, T0, closed_at=at(5), updated_at=at(5)))
    assert [c.id for c in await repo.list_cases()] == ["C-1", "C-2"]
    assert [c.id for c in await repo.list_cases(CaseState.CLOSED)] == ["C-2"]
    closed = await repo.get_case("C-2")
    assert closed is not None and closed.state is CaseState.CLOSED and closed.closed_at == at(5)


async def test_deleting_a_purged_case_removes_its_rows_but_not_audit(repo: SqlRepository) -> None:
    """Deleting a purged case's rows removes its files, uploads and sessions, not other cases or the audit
    trail."""
    for case_id in ("C-1", "C-2"):
        await repo.save_case(Case(case_id, CaseState.OPEN, T0))
        await repo.add_file(make_file("f_" + case_id, case_id))
        await repo.add_upload(make_upload("u" + case_id, case_id))
        await repo.add_session(Session("h" + case_id, "bob", Role.CUSTOMER, case_id, "csrf", T0, at(60)))
    await repo.add_audit(AuditEvent(T0, "case.purged", "system", "service", "C-1"))
    await repo.delete_purged_cases(["C-1"], [])
    assert await repo.get_case("C-1") is None
    assert await repo.list_files("C-1") == [] and await repo.list_uploads("C-1") == []
    assert await repo.get_session("hC-1") is None
    assert await repo.get_case("C-2") is not None and len(await repo.list_files("C-2")) == 1
    assert [e.action for e in await repo.list_audit("C-1")] == ["case.purged"]


# files ---------------------------------------------------------------------------------------------------


async def test_files_round_trip_and_list_in_upload_order(repo: SqlRepository) -> None:
    """Files keep every field (sizes beyond 4 GiB too) and list by upload time."""
    await repo.add_file(make_file("f_b", uploaded_at=at(2)))
    await repo.add_file(make_file("f_a", uploaded_at=at(1)))
    assert await repo.get_file("C-1", "f_a") == make_file("f_a", uploaded_at=at(1))
    assert await repo.get_file("C-2", "f_a") is None
    assert [f.id for f in await repo.list_files("C-1")] == ["f_a", "f_b"]


async def test_delete_file_reports_whether_it_existed(repo: SqlRepository) -> None:
    """delete_file returns True for an existing file and False afterwards."""
    await repo.add_file(make_file())
    assert await repo.delete_file("C-1", "f_1") is True
    assert await repo.delete_file("C-1", "f_1") is False
    assert await repo.get_file("C-1", "f_1") is None


# uploads -------------------------------------------------------------------------------------------------


async def test_uploads_round_trip_with_metadata_and_partials(repo: SqlRepository) -> None:
    """Uploads keep every field, including JSON metadata, partial lists and an unknown length."""
    upload = make_upload(length=None, concat=ConcatKind.FINAL, partials=["p1", "p2"])
    await repo.add_upload(upload)
    assert await repo.get_upload("u1") == upload
    assert await repo.get_upload("nope") is None


async def test_list_uploads_filters_by_case_and_state(repo: SqlRepository) -> None:
    """list_uploads returns a case's uploads in creation order, optionally of one state."""
    await repo.add_upload(make_upload("u2", created_at=at(2)))
    await repo.add_upload(make_upload("u1", created_at=at(1), state=UploadState.FINISHED))
    await repo.add_upload(make_upload("u3", case_id="C-2"))
    assert [u.id for u in await repo.list_uploads("C-1")] == ["u1", "u2"]
    assert [u.id for u in await repo.list_uploads("C-1", UploadState.ACTIVE)] == ["u2"]


async def test_save_progress_records_offset_length_and_expiry(repo: SqlRepository) -> None:
    """save_progress stores the new offset, length, name and times of an upload."""
    upload = make_upload(length=None)
    await repo.add_upload(upload)
    upload.offset, upload.length, upload.name = 5 * 2**40, 6 * 2**40, "renamed.bin"
    upload.updated_at, upload.expires_at = at(5), at(7200)
    await repo.save_progress(upload)
    assert await repo.get_upload("u1") == upload


async def test_set_upload_state_changes_state_and_time(repo: SqlRepository) -> None:
    """set_upload_state records the state and when it changed."""
    await repo.add_upload(make_upload())
    await repo.set_upload_state("u1", UploadState.TERMINATED, at(9))
    stored = await repo.get_upload("u1")
    assert stored is not None and stored.state is UploadState.TERMINATED and stored.updated_at == at(9)


async def test_finish_upload_adds_the_file_in_the_same_transaction(repo: SqlRepository) -> None:
    """Finishing marks the upload finished and adds its file; if adding the file fails, neither happens."""
    await repo.add_upload(make_upload("u1", offset=1000))
    await repo.add_file(make_file("f_u2"))
    clash = make_upload("u2", offset=1000)
    await repo.add_upload(clash)
    with pytest.raises(sa.exc.IntegrityError):
        await repo.finish_upload(clash, make_file("f_u2"))
    stored = await repo.get_upload("u2")
    assert stored is not None and stored.state is UploadState.ACTIVE
    upload = make_upload("u1", offset=1000)
    await repo.finish_upload(upload, make_file("f_u1"))
    stored = await repo.get_upload("u1")
    assert stored is not None and stored.state is UploadState.FINISHED
    assert await repo.get_file("C-1", "f_u1") is not None


async def test_finish_partial_upload_adds_no_file(repo: SqlRepository) -> None:
    """A partial upload (tus concatenation) finishes without a file of its own."""
    upload = make_upload(concat=ConcatKind.PARTIAL, offset=1000)
    await repo.add_upload(upload)
    await repo.finish_upload(upload, None)
    stored = await repo.get_upload("u1")
    assert stored is not None and stored.state is UploadState.FINISHED
    assert await repo.list_files("C-1") == []


async def test_delete_upload_forgets_it(repo: SqlRepository) -> None:
    """A deleted upload is unknown afterwards."""
    await repo.add_upload(make_upload())
    await repo.delete_upload("u1")
    assert await repo.get_upload("u1") is None


# sessions, launch tokens, audit --------------------------------------------------------------------------


async def test_sessions_round_trip_and_expire(repo: SqlRepository) -> None:
    """Sessions are stored, found by hash, deleted, and removed once expired."""
    live = Session("h1", "alice", Role.ENGINEER, None, "csrf1", T0, at(100))
    old = Session("h2", "bob", Role.CUSTOMER, "C-1", "csrf2", T0, at(10))
    await repo.add_session(live)
    await repo.add_session(old)
    assert await repo.get_session("h1") == live
    await repo.delete_expired(at(50))
    assert await repo.get_session("h2") is None and await repo.get_session("h1") == live
    await repo.delete_session("h1")
    assert await repo.get_session("h1") is None


async def test_launch_tokens_are_single_use_until_they_expire(repo: SqlRepository) -> None:
    """A launch token's jti is accepted once; after expiry cleanup its record is gone."""
    assert await repo.use_launch_jti("j1", at(10)) is True
    assert await repo.use_launch_jti("j1", at(10)) is False
    await repo.delete_expired(at(20))
    assert await repo.use_launch_jti("j1", at(30)) is True


async def test_audit_events_list_in_order_by_case_with_limit(repo: SqlRepository) -> None:
    """Audit events keep their details and list oldest first, per case, up to a limit."""
    for i in range(5):
        await repo.add_audit(
            AuditEvent(
                at(i),
                f"a{i}",
                "alice",
                "customer",
                "C-1" if i % 2 else "C-2",
                "t",
                "127.0.0.1",
                "http",
                {"n": i, "name": "ü"},
            )
        )
    events = await repo.list_audit()
    assert [e.action for e in events] == ["a0", "a1", "a2", "a3", "a4"]
    assert events[1].detail == {"n": 1, "name": "ü"} and events[1].at == at(1) and events[1].id is not None
    assert [e.action for e in await repo.list_audit("C-1")] == ["a1", "a3"]
    assert [e.action for e in await repo.list_audit(limit=2)] == ["a0", "a1"]
