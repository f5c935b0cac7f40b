"""The scrub (eftgw/scrub.py) on every backend: stored files re-hashed against their recorded SHA-256, damage
and missing objects reported, intact files passed; and :func:`verified` never lets a damaged stream end.

On S3 a byte is flipped by overwriting the object through the S3 API, as a failing storage layer would.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eftgw.metadata import SqlRepository
from eftgw.model import Case, CaseState, FileRecord
from eftgw.scrub import DamagedFile, scrub, verified
from eftgw.storage import object_key, staging_key
from eftgw.storage.base import ObjectStore
from eftgw.storage.filesystem import FilesystemStore
from eftgw.storage.s3 import S3Store
from tests.storage.test_conformance import MiB, data, read_all, stage

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[SqlRepository]:
    repository = SqlRepository(f"sqlite+aiosqlite:///{tmp_path / 'scrub.sqlite3'}")
    await repository.migrate()
    yield repository
    await repository.close()


async def store_file(
    store: ObjectStore, repo: SqlRepository, case_id: str, file_id: str, payload: bytes
) -> FileRecord:
    """Store ``payload`` as a completed file the way uploads do (staging, promotion, a record)."""
    if await repo.get_case(case_id) is None:
        await repo.save_case(Case(case_id, CaseState.OPEN, NOW))
    sha256 = hashlib.sha256(payload).hexdigest()
    staging = staging_key(case_id, "u-" + file_id)
    await stage(store, staging, payload)
    key = object_key(case_id, file_id)
    await store.promote(staging, key, {"case": case_id, "region": "us", "file": file_id, "sha256": sha256})
    record = FileRecord(
        id=file_id,
        case_id=case_id,
        name=f"{file_id}.log",
        size=len(payload),
        sha256=sha256,
        xxh128="0" * 32,
        object_key=key,
        uploaded_at=NOW,
        uploaded_by="alice",
        source="customer",
        via="http",
    )
    await repo.add_file(record)
    return record


async def flip_byte(store: ObjectStore, key: str, offset: int) -> None:
    """Change one stored byte behind the gateway's back."""
    if isinstance(store, FilesystemStore):
        path = store.root / key
        body = bytearray(path.read_bytes())
        body[offset] ^= 0x01
        path.write_bytes(bytes(body))
        return
    assert isinstance(store, S3Store)
    body = bytearray(await store.client.get_bytes(key, 0, 0))
    body[offset] ^= 0x01
    await store.client.put(key, bytes(body))


async def test_scrub_reports_damaged_and_missing_files(
    store: ObjectStore, repo: SqlRepository, case_id: str
) -> None:
    """Intact files pass; a flipped byte is damaged (expected and actual SHA-256); a deleted object is
    missing; --case limits the scrub to one case."""
    other = case_id + "-b"
    good = await store_file(store, repo, case_id, "f_good", data(9 * MiB + 3, 1))
    bad = await store_file(store, repo, case_id, "f_bad", data(2 * MiB, 2))
    gone = await store_file(store, repo, other, "f_gone", data(1000, 3))
    empty = await store_file(store, repo, other, "f_empty", b"")

    clean = await scrub(repo, store, case_id)
    assert clean.ok and clean.checked == 2 and clean.bytes == good.size + bad.size

    await flip_byte(store, bad.object_key, MiB + 7)
    await store.delete_object(gone.object_key)
    report = await scrub(repo, store, case_id)
    assert not report.ok and report.checked == 2
    (damage,) = report.damaged
    corrupt = bytearray(data(2 * MiB, 2))
    corrupt[MiB + 7] ^= 0x01
    assert damage.as_json() == {
        "case": case_id,
        "file": "f_bad",
        "expected_sha256": bad.sha256,
        "actual_sha256": hashlib.sha256(corrupt).hexdigest(),
        "expected_size": bad.size,
        "actual_size": bad.size,
    }
    assert report.missing == []

    theirs = await scrub(repo, store, other)
    assert not theirs.ok and theirs.checked == 1 and theirs.damaged == []
    assert theirs.missing == [{"case": other, "file": "f_gone", "object_key": gone.object_key}]

    everything = await scrub(repo, store)
    assert everything.checked == 3 and everything.bytes == good.size + bad.size + empty.size
    assert [d.file_id for d in everything.damaged] == ["f_bad"] and len(everything.missing) == 1


async def test_verified_stream_holds_back_the_end_of_a_damaged_file(
    store: ObjectStore, repo: SqlRepository, case_id: str
) -> None:
    """verified() yields an intact file whole; for a damaged one it raises before the last block, so what a
    consumer passed on is always short of the whole file."""
    record = await store_file(store, repo, case_id, "f_v", data(3 * MiB + 11, 4))
    assert await read_all(verified(record, store.read_object(record.object_key))) == data(3 * MiB + 11, 4)
    await flip_byte(store, record.object_key, 5)
    passed = bytearray()
    with pytest.raises(DamagedFile) as caught:
        async for block in verified(record, store.read_object(record.object_key), found_by="test"):
            passed += block
    assert len(passed) < record.size
    assert caught.value.damage.file_id == "f_v" and caught.value.damage.case_id == case_id
