"""What only the S3 backend has to prove: buckets, versioning, crashes between S3 requests, multipart
leftovers and the orphan sweep, against a real S3 server (Ceph RGW)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from minio.datatypes import Part

from eftgw.errors import StorageUnavailable
from eftgw.hashing import FileDigests
from eftgw.ingest import Ingest, block_write
from eftgw.storage import ObjectNotFound, StorageError, object_key, staging_key
from eftgw.storage.budget import BufferBudget
from eftgw.storage.s3 import S3Store
from eftgw.storage.s3_client import Body, Listed
from eftgw.storage.s3_writer import _Part
from tests.storage.conftest import S3Server
from tests.storage.test_conformance import TAGS, MiB, data, read_all


@pytest.fixture
async def s3(s3_server: S3Server, s3_bucket: str) -> AsyncIterator[S3Store]:
    store = s3_server.store(s3_bucket)
    await store.open()
    yield store
    await store.close()


async def test_open_creates_a_missing_bucket(s3_server: S3Server, new_bucket: Callable[[], str]) -> None:
    """open() creates the bucket when it does not exist, and opening again is fine."""
    name = new_bucket()
    store = s3_server.store(name)
    await store.open()
    await store.open()
    await store.close()
    assert s3_server.admin().bucket_exists(name)


async def test_open_without_rights_says_so(s3_server: S3Server, new_bucket: Callable[[], str]) -> None:
    """With credentials S3 refuses, open() raises a StorageError that names the bucket and the fix."""
    name = new_bucket()
    store = s3_server.store(name, secret_key="not-the-secret")
    with pytest.raises(StorageError) as caught:
        await store.open()
    await store.close()
    assert isinstance(caught.value, StorageUnavailable)
    assert name in caught.value.message and "create" in caught.value.message
    assert caught.value.__cause__ is not None


async def test_unreachable_server_is_a_storage_error(new_bucket: Callable[[], str]) -> None:
    """A server that does not answer is reported as StorageError (HTTP 503 to clients), not a crash."""
    from eftgw.storage.s3_client import S3Client

    store = S3Store(S3Client("127.0.0.1:23999", "a", "b", new_bucket(), secure=False, timeout=5))
    with pytest.raises(StorageError):
        await store.open()
    await store.close()


async def test_versioned_bucket_deletes_every_version(
    s3_server: S3Server, new_bucket: Callable[[], str]
) -> None:
    """On a versioned bucket, deleting staging data and objects leaves no version and no delete marker."""
    name = new_bucket()
    admin = s3_server.admin()
    admin.make_bucket(name)
    from minio.commonconfig import ENABLED
    from minio.versioningconfig import VersioningConfig

    admin.set_bucket_versioning(name, VersioningConfig(ENABLED))
    store = s3_server.store(name)
    await store.open()
    try:
        assert store.versioned
        key, target = staging_key("C-1", "u1"), object_key("C-1", "f_1")
        await stage_for(store, key, target, data(3 * MiB, 1), data(30 * MiB, 2))  # a part, a tail, 3 records
        await store.promote(key, target, TAGS)
        await stage_for(store, key, object_key("C-1", "f_2"), data(20 * MiB, 3))
        assert len(await read_all(store.read_staging(key))) == 20 * MiB  # sealed into f_2: a version there
        await store.delete_staging(key)
        assert await store.list_keys("uploads/") == []
        await store.delete_object(target)
        assert await store.list_keys("") == []
        assert list(admin.list_objects(name, recursive=True, include_version=True)) == []
    finally:
        await store.close()


async def stage_for(store: S3Store, key: str, target: str, *chunks: bytes) -> int:
    """Like ``stage``, for staging data created for the object ``target`` (as the engine does)."""
    await store.create_staging(key, target)
    size = 0
    for chunk in chunks:
        writer = await store.open_writer(key, size)
        await writer.write(chunk)
        size = await writer.commit()
        await writer.close()
    return size


def count_calls(store: S3Store, *names: str) -> dict[str, int]:
    """Count the calls of the client methods ``names`` (server-side copies, plain PUTs, ...)."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        method = getattr(store.client, name)

        def counted(*args: object, _name: str = name, _method: Any = method, **kwargs: object) -> Any:
            counts[_name] += 1
            return _method(*args, **kwargs)

        setattr(store.client, name, counted)
    return counts


async def test_completion_is_a_completion_not_a_copy(s3: S3Store, case_id: str) -> None:
    """Data staged for its object goes to S3 once: promotion completes the multipart upload (its ETag says
    so) and sets the tags; nothing is copied server-side or uploaded twice."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    stored = data(3 * MiB, 1) + data(50 * MiB, 2) + data(5, 3)
    await stage_for(s3, key, target, stored[: 3 * MiB], stored[3 * MiB : 53 * MiB], stored[53 * MiB :])
    calls = count_calls(s3, "upload_part_copy", "copy", "upload_part")
    await s3.promote(key, target, TAGS)
    assert calls == {"upload_part_copy": 0, "copy": 0, "upload_part": 1}  # only the 5 MiB tail, once
    assert await read_all(s3.read_object(target)) == stored
    assert await s3.object_tags(target) == TAGS
    stat = s3_stat(s3, target)
    assert stat.endswith('-4"') or stat.endswith("-4")  # three 16 MiB parts and the tail
    assert await s3.list_keys(f"uploads/{case_id}/") == []
    assert await s3.client.unfinished(f"cases/{case_id}/") == []


async def test_each_part_is_sent_with_the_sha256_of_its_bytes(
    s3: S3Store, case_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer hashes each part while it fills (the committed tail first, then chunks cut at the part
    boundaries), in a worker thread, not the event loop's: the digest it passes to UploadPart
    is hashlib's SHA-256 of exactly the part's bytes, and RGW, which checks it, accepts every part. A chunk
    its producer may change later (a bytearray) is kept as it was when written."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    stored = data(5 * MiB, 1) + data(40 * MiB, 2)
    assert await stage_for(s3, key, target, stored[: 5 * MiB]) == 5 * MiB  # a tail in the commit record
    sent: list[tuple[str | None, bytes]] = []
    upload_part = s3.client.upload_part

    async def spy(name: str, upload: str, number: int, body: Body, sha256: str | None = None) -> Any:
        sent.append((sha256, b"".join(body.blocks())))
        return await upload_part(name, upload, number, body, sha256)

    s3.client.upload_part = spy  # type: ignore[method-assign]
    hashed_in: set[int] = set()
    fill = _Part.fill

    def spying_fill(part: _Part, pieces: list[memoryview], room: int) -> list[memoryview]:
        hashed_in.add(threading.get_ident())
        return fill(part, pieces, room)

    monkeypatch.setattr(_Part, "fill", spying_fill)
    writer = await s3.open_writer(key, 5 * MiB)
    chunks: list[bytes] = [stored[at : at + 300_001] for at in range(5 * MiB, len(stored), 300_001)]
    changing = bytearray(chunks.pop())
    for at in range(0, len(chunks), 4):
        await writer.write_chunks(chunks[at : at + 4])
    await writer.write_chunks([changing])  # type: ignore[list-item]
    changing[:] = bytes(len(changing))  # changed after it was written: the upload keeps what was written
    assert await writer.commit() == len(stored)
    await writer.close()
    assert len(sent) == 2  # two full 16 MiB parts; the rest is the commit record's tail
    for index, (digest, body) in enumerate(sent):
        assert body == stored[index * 16 * MiB : (index + 1) * 16 * MiB]
        assert digest == hashlib.sha256(body).hexdigest()
    assert hashed_in and threading.get_ident() not in hashed_in
    await s3.promote(key, target, TAGS)
    assert await read_all(s3.read_object(target)) == stored


async def test_a_blocks_hashing_runs_once_in_the_hop_that_fills_its_first_bytes(
    s3_server: S3Server, s3_bucket: str, case_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the body pipeline (``Ingest._consume`` with ``block_write``), the S3 writer runs a block's
    hashing in the worker thread that then copies the block's first bytes into a part: one thread hop per
    block instead of two. It runs once per block, also when the block takes several fills (a 24 MiB share
    and a 40 MiB block: the writer waits for a part in flight in between), and after a committed tail, whose
    bytes were hashed when they came and are not hashed again. The digests are the blocks', and the object
    holds the tail and the blocks."""
    store = S3Store(s3_server.client(s3_bucket), budget=BufferBudget(1024 * MiB), writer_memory=24 * MiB)
    await store.open()
    events: list[tuple[str, int]] = []
    fill = _Part.fill

    def spying_fill(part: _Part, pieces: list[memoryview], room: int) -> list[memoryview]:
        events.append(("fill", threading.get_ident()))
        return fill(part, pieces, room)

    class SpyingDigests(FileDigests):
        def update(self, data: bytes) -> None:
            events.append(("hash", threading.get_ident()))
            super().update(data)

    monkeypatch.setattr(_Part, "fill", spying_fill)
    try:
        key, target = staging_key(case_id, "along"), object_key(case_id, "f_along")
        tail = data(3 * MiB, 1)
        assert await stage_for(store, key, target, tail) == len(tail)
        blocks = [data(40 * MiB, 2), data(MiB, 3)]
        digests = SpyingDigests()
        writer = await store.open_writer(key, len(tail))
        write = block_write(writer)
        try:
            for block, fills in zip(blocks, (3, 1), strict=True):  # at least that many fills
                events.clear()
                await Ingest._consume(write, digests, None, [block])
                (hashing,) = [thread for what, thread in events if what == "hash"]
                assert events[:2] == [("hash", hashing), ("fill", hashing)]
                assert len(events) - 1 >= fills and hashing != threading.get_ident()
            assert await writer.commit() == len(tail) + sum(map(len, blocks))
        finally:
            await writer.close()
        assert digests.sha256_hex == hashlib.sha256(b"".join(blocks)).hexdigest()
        await store.promote(key, target, TAGS)
        assert await read_all(store.read_object(target)) == tail + b"".join(blocks)
    finally:
        await store.close()


def s3_stat(s3: S3Store, key: str) -> str:
    return str(s3.client.minio.stat_object(s3.client.bucket, key).etag)


async def test_a_small_file_is_one_put(s3: S3Store, case_id: str) -> None:
    """A file smaller than one part never starts a multipart upload: promotion is one PUT of the tail."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    await stage_for(s3, key, target, data(MiB, 1), data(2, 2))
    assert await s3.client.unfinished(f"cases/{case_id}/") == []
    await s3.promote(key, target, TAGS)
    assert await read_all(s3.read_object(target)) == data(MiB, 1) + data(2, 2)
    assert await s3.object_tags(target) == TAGS


async def test_reading_back_seals_and_the_upload_continues(s3: S3Store, case_id: str) -> None:
    """Reading staging data back (a node rebuilding digests) completes its parts into the target; writing
    then continues and the final object holds every byte, the sealed prefix copied back server-side."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    first, second, third = data(20 * MiB, 1), data(40 * MiB, 2), data(MiB, 3)
    await stage_for(s3, key, target, first)
    assert await read_all(s3.read_staging(key)) == first  # seals the first 16 MiB part
    await stage_more(s3, key, len(first), second)
    assert await read_all(s3.read_staging(key, 10 * MiB, 50 * MiB)) == (first + second)[10 * MiB : 50 * MiB]
    await stage_more(s3, key, 60 * MiB, third)
    calls = count_calls(s3, "upload_part_copy")
    await s3.promote(key, target, TAGS)
    assert calls["upload_part_copy"] == 1  # the 48 MiB sealed base, once
    assert await read_all(s3.read_object(target)) == first + second + third
    assert await s3.list_keys(f"uploads/{case_id}/") == []


async def stage_more(store: S3Store, key: str, offset: int, chunk: bytes) -> int:
    writer = await store.open_writer(key, offset)
    await writer.write(chunk)
    size = await writer.commit()
    await writer.close()
    return size


async def test_truncating_inside_the_parts(s3: S3Store, case_id: str) -> None:
    """Cutting an upload back into its committed parts (SFTP truncate or overwrite) keeps exactly the prefix,
    and the upload continues from there to the right bytes."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    stored = data(50 * MiB, 1)
    await stage_for(s3, key, target, stored)
    for cut in (40 * MiB + 7, 16 * MiB, 3 * MiB):
        writer = await s3.open_writer(key, cut)
        assert await writer.commit() == cut
        await writer.close()
        assert await s3.staging_size(key) == cut
        assert await read_all(s3.read_staging(key)) == stored[:cut]
    rest = data(30 * MiB, 2)
    await stage_more(s3, key, 3 * MiB, rest)
    await s3.promote(key, target, TAGS)
    assert await read_all(s3.read_object(target)) == stored[: 3 * MiB] + rest


async def test_concatenating_partials_with_parts(s3: S3Store, case_id: str) -> None:
    """tus concatenation of partial uploads that hold full parts and tails makes the right object; the
    partials stay until deleted, then nothing is left."""
    pieces = [data(20 * MiB, 1), data(3, 2), data(17 * MiB, 3)]
    keys = [staging_key(case_id, f"p{i}") for i in range(3)]
    for key, piece in zip(keys, pieces, strict=True):
        await s3.create_staging(key)
        await stage_more(s3, key, 0, piece)
    target = object_key(case_id, "f_1")
    await s3.concatenate(keys, target, TAGS)
    assert await read_all(s3.read_object(target)) == b"".join(pieces)
    for key in keys:
        await s3.delete_staging(key)
    assert await s3.list_keys(f"uploads/{case_id}/") == []
    assert await s3.client.unfinished(f"uploads/{case_id}/") == []


async def test_a_node_dying_before_commit_costs_only_a_resume(
    s3: S3Store, s3_server: S3Server, s3_bucket: str, case_id: str
) -> None:
    """Parts a dead node uploaded without committing are ignored; another node resumes where it committed."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    first = data(10 * MiB, 1)
    await stage_for(s3, key, target, first)
    dying = await s3.open_writer(key, len(first))
    await dying.write(data(40 * MiB, 2))  # two full parts reach S3; then the node is killed
    # its requests end (a killed node's connections close)
    await asyncio.gather(*[task for task, _part in dying._inflight])
    other = s3_server.store(s3_bucket)
    await other.open()
    try:
        assert await other.staging_size(key) == len(first)
        writer = await other.open_writer(key, len(first))
        rest = data(7 * MiB, 3)
        await writer.write(rest)
        assert await writer.commit() == len(first) + len(rest)
        await writer.close()
        await other.promote(key, target, TAGS)
        assert await read_all(other.read_object(target)) == first + rest
        assert await other.list_keys(f"uploads/{case_id}/") == []
        assert await other.client.unfinished(f"cases/{case_id}/") == []
    finally:
        await other.close()


async def test_rollback_leaves_no_trace_in_the_file(s3: S3Store, case_id: str) -> None:
    """A rolled-back chunk (a failed checksum) whose parts reached S3 adds no key, and none of its bytes
    reach the file: the parts are replaced or dropped at completion."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    await stage_for(s3, key, target, data(2 * MiB))
    writer = await s3.open_writer(key, 2 * MiB)
    await writer.write(data(50 * MiB, 2))
    await writer.rollback()
    await writer.close()
    assert await s3.list_keys(f"uploads/{case_id}/") == [key]
    assert await s3.staging_size(key) == 2 * MiB
    await stage_more(s3, key, 2 * MiB, data(15 * MiB, 3))
    await s3.promote(key, target, TAGS)
    assert await read_all(s3.read_object(target)) == data(2 * MiB) + data(15 * MiB, 3)


async def test_terminating_aborts_the_multipart_upload(s3: S3Store, case_id: str) -> None:
    """Deleting staging data (termination, expiry, purge) aborts its multipart upload and deletes a sealed
    prefix at the target: nothing of it is left anywhere."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    await stage_for(s3, key, target, data(40 * MiB))
    assert len(await s3.client.unfinished(f"cases/{case_id}/")) == 1
    await s3.delete_staging(key)
    assert await s3.list_keys(f"cases/{case_id}/") == [] == await s3.list_keys(f"uploads/{case_id}/")
    await stage_for(s3, key, target, data(40 * MiB))
    await read_all(s3.read_staging(key))  # sealed: the prefix is an object at the target
    assert await s3.list_keys(f"cases/{case_id}/") == [target]
    await s3.delete_staging(key)
    assert await s3.list_keys(f"cases/{case_id}/") == [] == await s3.list_keys(f"uploads/{case_id}/")


async def test_unfinished_multipart_upload_is_listed_and_deleted_with_its_key(
    s3: S3Store, case_id: str
) -> None:
    """A multipart upload a crash left open (an interrupted promotion) shows in list_keys; delete_object
    aborts it."""
    target = object_key(case_id, "f_1")
    await s3.client.create_multipart(target, {}, {})
    assert await s3.list_keys(f"cases/{case_id}/") == [target]
    await s3.delete_object(target)
    assert await s3.list_keys(f"cases/{case_id}/") == []


async def test_sweep_removes_orphans_and_keeps_live_uploads(s3: S3Store, case_id: str) -> None:
    """The orphan sweep deletes staging data no upload knows and stale multipart uploads no commit record
    lists; the multipart upload of a live upload survives however old it is."""
    live, orphan = staging_key(case_id, "live"), staging_key(case_id, "orphan")
    await stage_for(s3, live, object_key(case_id, "f_1"), data(20 * MiB, 1))
    await stage_for(s3, orphan, object_key(case_id, "f_2"), data(20 * MiB, 2))
    stale = await s3.client.create_multipart(object_key(case_id, "f_9"), {}, {})
    assert stale

    async def is_live(key: str) -> bool:
        return key == live or not key.startswith(f"uploads/{case_id}/")

    now = dt.datetime.now(dt.UTC)
    assert await s3.sweep_orphans(is_live, now=now) == []  # everything is younger than the grace period
    removed = await s3.sweep_orphans(is_live, now=now + dt.timedelta(hours=2))
    assert orphan in removed and object_key(case_id, "f_9") in removed and live not in removed
    assert await s3.list_keys(f"uploads/{case_id}/") == [live]
    assert await s3.list_keys(f"cases/{case_id}/") == [object_key(case_id, "f_1")]  # live's upload
    await s3.promote(live, object_key(case_id, "f_1"), TAGS)
    assert await read_all(s3.read_object(object_key(case_id, "f_1"))) == data(20 * MiB, 1)


async def test_promote_retry_after_crash_before_cleanup(s3: S3Store, case_id: str) -> None:
    """A promotion that completed the multipart upload but died before deleting the commit record can
    simply run again."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    stored = data(18 * MiB)
    await stage_for(s3, key, target, stored)
    record, tail = await s3.load(key)
    assert record.upload is not None
    assert await s3._complete(record, len(stored), tail)  # the crash: the commit record is still there
    await s3.promote(key, target, TAGS)
    assert await read_all(s3.read_object(target)) == stored
    assert await s3.object_tags(target) == TAGS
    assert await s3.list_keys(f"uploads/{case_id}/") == []
    with pytest.raises(ObjectNotFound):
        await s3.staging_size(key)


async def test_promote_retry_after_crash_between_record_deletion_and_tagging(
    s3: S3Store, case_id: str
) -> None:
    """The last step of a promotion deletes the commit record while it tags the file; a promotion that died
    with the record gone but the tags not set yet sets them when it runs again."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    stored = data(18 * MiB)
    await stage_for(s3, key, target, stored)
    record, tail = await s3.load(key)
    assert await s3._complete(record, len(stored), tail)
    await s3.client.delete([(key, None)])  # the crash: the record is gone, the file has no tags
    assert await s3.object_tags(target) == {}
    await s3.promote(key, target, TAGS)
    assert await s3.object_tags(target) == TAGS
    assert await read_all(s3.read_object(target)) == stored


async def test_promote_on_a_plain_bucket_deletes_the_record_without_listing(
    s3: S3Store, case_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a bucket without versioning, the record is deleted by its name: no listing round trip."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    await stage_for(s3, key, target, data(18 * MiB))
    assert not s3.versioned
    listings: list[str] = []
    real = s3.client.listing

    async def counted(prefix: str, *, versions: bool = False) -> list[Listed]:
        listings.append(prefix)
        return await real(prefix, versions=versions)

    monkeypatch.setattr(s3.client, "listing", counted)
    await s3.promote(key, target, TAGS)
    assert listings == []
    monkeypatch.undo()
    assert await s3.list_keys(f"uploads/{case_id}/") == []
    assert await s3.object_tags(target) == TAGS


async def test_promote_completes_without_listing_the_parts_unless_refused(
    s3: S3Store, case_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promotion completes the multipart upload at once, without ListParts first; only when the store
    refuses (RGW 16 while parts of an abandoned write are stored) does it list them, and then it seals."""
    calls: list[str] = []
    real = s3.client.list_parts

    async def counted(name: str, upload_id: str) -> list[Part]:
        calls.append(name)
        return await real(name, upload_id)

    monkeypatch.setattr(s3.client, "list_parts", counted)
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    stored = data(18 * MiB)
    await stage_for(s3, key, target, stored)
    await s3.promote(key, target, TAGS)
    assert calls == []
    assert await read_all(s3.read_object(target)) == stored

    key, target = staging_key(case_id, "u2"), object_key(case_id, "f_2")
    await stage_for(s3, key, target, stored)
    record, _tail = await s3.load(key)
    assert record.upload is not None and len(record.parts) == 1
    await s3.client.upload_part(target, record.upload, 2, data(16 * MiB, 5))  # an abandoned write's part
    await s3.promote(key, target, TAGS)
    assert calls == [target, target]  # refused at once (InvalidPart): listed, then the seal lists them too
    assert await read_all(s3.read_object(target)) == stored
    assert await s3.object_tags(target) == TAGS
    assert await s3.client.unfinished(target) == []


async def test_a_crash_while_sealing_is_finished_by_the_next_reader(s3: S3Store, case_id: str) -> None:
    """A seal that completed the parts but died before rewriting the record is finished when the staging
    data is next loaded; no byte is lost."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    stored = data(40 * MiB)
    await stage_for(s3, key, target, stored)
    record, tail = await s3.load(key)
    record.sealing = True
    await s3.put_record(key, record, tail)
    await s3._complete(record, record.parts_end, b"", seal=True)  # the crash: the record says "sealing"
    assert await read_all(s3.read_staging(key)) == stored
    await s3.promote(key, target, TAGS)
    assert await read_all(s3.read_object(target)) == stored


async def test_an_empty_upload_and_a_short_one_promote_with_one_put(s3: S3Store, case_id: str) -> None:
    """A file smaller than one part is one PutObject of the record's tail, sent with its signed SHA-256;
    an empty one is too (no body at all, not an empty chunked one, which the server refuses)."""
    for name, content in (("empty", b""), ("short", data(3 * MiB, 8))):
        key, target = staging_key(case_id, name), object_key(case_id, f"f_{name}")
        await s3.create_staging(key, target)
        writer = await s3.open_writer(key, 0)
        try:
            await writer.write(content)
            assert await writer.commit() == len(content)
        finally:
            await writer.close()
        await s3.promote(key, target, TAGS)
        assert await s3.object_size(target) == len(content)
        assert await read_all(s3.read_object(target)) == content
        assert await s3.client.unfinished(target) == []
