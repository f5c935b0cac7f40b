"""What only the S3 backend has to prove: buckets, versioning, crashes between S3 requests, multipart
leftovers and the orphan sweep, against a real S3 server (Ceph RGW)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable

import pytest

from eftgw.errors import StorageUnavailable
from eftgw.storage import ObjectNotFound, StorageError, object_key, staging_key
from eftgw.storage.s3 import S3Store
from eftgw.storage.s3_parts import part_name
from tests.storage.conftest import S3Server
from tests.storage.test_conformance import TAGS, MiB, data, read_all, stage


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
        await stage(store, key, data(3 * MiB, 1), data(9 * MiB, 2))  # the record is overwritten: 3 versions
        await store.promote(key, target, TAGS)
        await stage(store, key, data(1, 3))
        await store.delete_staging(key)
        assert await store.list_keys("uploads/") == []
        await store.delete_object(target)
        assert await store.list_keys("") == []
        assert list(admin.list_objects(name, recursive=True, include_version=True)) == []
    finally:
        await store.close()


async def test_a_node_dying_before_commit_costs_only_a_resume(
    s3: S3Store, s3_server: S3Server, s3_bucket: str, case_id: str
) -> None:
    """Parts a dead node uploaded without committing are ignored; another node resumes where it committed."""
    key = staging_key(case_id, "u1")
    first = data(10 * MiB, 1)
    await stage(s3, key, first)
    dying = await s3.open_writer(key, len(first))
    await dying.write(data(20 * MiB, 2))  # two more full parts reach S3; then the node is killed
    other = s3_server.store(s3_bucket)
    await other.open()
    try:
        assert await other.staging_size(key) == len(first)
        writer = await other.open_writer(key, len(first))
        rest = data(7 * MiB, 3)
        await writer.write(rest)
        assert await writer.commit() == len(first) + len(rest)
        await writer.close()
        assert await read_all(other.read_staging(key)) == first + rest
        await other.promote(key, object_key(case_id, "f_1"), TAGS)
        assert await read_all(other.read_object(object_key(case_id, "f_1"))) == first + rest
        assert await other.list_keys(f"uploads/{case_id}/") == []
    finally:
        await other.close()


async def test_rollback_deletes_the_parts_it_uploaded(s3: S3Store, case_id: str) -> None:
    """A rolled-back chunk (a failed checksum) leaves no part objects in S3."""
    key = staging_key(case_id, "u1")
    await stage(s3, key, data(2 * MiB))
    writer = await s3.open_writer(key, 2 * MiB)
    await writer.write(data(30 * MiB, 2))
    assert len(await s3.list_keys(key + "/")) >= 3  # the fourth may still be in flight
    await writer.rollback()
    await writer.close()
    assert await s3.list_keys(f"uploads/{case_id}/") == [key]
    assert await s3.staging_size(key) == 2 * MiB


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
    """The orphan sweep deletes staging data no upload knows and stale multipart uploads, and nothing else."""
    live, orphan = staging_key(case_id, "live"), staging_key(case_id, "orphan")
    await stage(s3, live, data(9 * MiB, 1))
    await stage(s3, orphan, data(9 * MiB, 2))
    stale = await s3.client.create_multipart(object_key(case_id, "f_9"), {}, {})
    assert stale

    async def is_live(key: str) -> bool:
        return key == live or not key.startswith(f"uploads/{case_id}/")

    now = dt.datetime.now(dt.UTC)
    assert await s3.sweep_orphans(is_live, now=now) == []  # everything is younger than the grace period
    removed = await s3.sweep_orphans(is_live, now=now + dt.timedelta(hours=2))
    assert orphan in removed and object_key(case_id, "f_9") in removed and live not in removed
    assert await s3.list_keys(f"uploads/{case_id}/") == [live, part_name(live, 0)]
    assert await s3.list_keys(f"cases/{case_id}/") == []


async def test_promote_retry_after_crash_before_cleanup(s3: S3Store, case_id: str) -> None:
    """A promotion that assembled the object but died before deleting staging data can simply run again."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    stored = data(18 * MiB)
    await stage(s3, key, stored)
    from eftgw.storage.s3_assembly import assemble

    segments, _ = await s3._segments(key)
    await assemble(s3.client, target, segments, TAGS)  # the crash: staging data is still there
    await s3.promote(key, target, TAGS)
    assert await read_all(s3.read_object(target)) == stored
    assert await s3.list_keys(f"uploads/{case_id}/") == []
    with pytest.raises(ObjectNotFound):
        await s3.staging_size(key)
