"""Backend failures are mapped once, at the storage edge, the same way for every call: a full disk or quota is
:class:`OutOfSpace` (HTTP 507), anything else :class:`StorageError` (503); a failed write keeps nothing past
the committed size. S3 request bodies carry ``Content-MD5``, so the store refuses a body damaged on the way.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from eftgw.errors import StorageFull, StorageUnavailable
from eftgw.storage import OutOfSpace, StorageError, staging_key
from eftgw.storage.base import os_error
from eftgw.storage.filesystem import FilesystemStore
from eftgw.storage.s3 import S3Store
from eftgw.storage.s3_client import Body, S3Client
from eftgw.storage.s3_parts import DATA_SUFFIX, Record
from tests.storage.conftest import S3Server
from tests.storage.test_conformance import MiB, data, read_all, stage
from tests.support import fill_disk, free_port


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_and_quota_are_out_of_space(code: int) -> None:
    """ENOSPC and EDQUOT become OutOfSpace: a StorageError, a StorageFull, HTTP 507 with a Retry-After."""
    error = os_error(OSError(code, "no space"), "write")
    assert (
        isinstance(error, OutOfSpace) and isinstance(error, StorageError) and isinstance(error, StorageFull)
    )
    assert error.status == 507 and error.code == "storage_full" and error.retry_after
    other = os_error(OSError(errno.EIO, "I/O error"), "write")
    assert type(other) is StorageError and other.status == 503


def test_kept_at_names_the_durable_offset() -> None:
    """An error that stopped an upload says the offset kept, and keeps its class and status."""
    kept = OutOfSpace("disk detail").kept_at(4096)
    assert isinstance(kept, OutOfSpace) and kept.offset == 4096 and kept.status == 507
    assert (
        kept.message
        == "The gateway's storage is full; your upload is kept at offset 4096 \u2014 retry later."
    )
    assert "disk detail" not in kept.message  # operators' detail goes to the log, not to the customer
    unavailable = StorageUnavailable().kept_at(10)
    assert unavailable.message.startswith(StorageUnavailable.default_message)
    assert "offset 10" in unavailable.message and unavailable.status == 503


async def test_filesystem_full_disk_keeps_the_committed_size_and_resumes(small_disk: Path) -> None:
    """On a full tmpfs a write raises OutOfSpace; after rollback and close the staging file is exactly the
    committed size; once space is freed the same staging data continues from there."""
    store = FilesystemStore(small_disk / "objects")
    await store.open()
    key = staging_key("C-1", "u1")
    first, rest = data(MiB, 1), data(4 * MiB, 2)
    assert await stage(store, key, first) == MiB
    filler = fill_disk(small_disk, leave=MiB)
    writer = await store.open_writer(key, MiB)
    try:
        with pytest.raises(OutOfSpace):
            await writer.write(rest)
        await writer.rollback()
    finally:
        await writer.close()
    assert await store.staging_size(key) == MiB
    assert (small_disk / "objects" / key).stat().st_size == MiB
    filler.unlink()
    writer = await store.open_writer(key, MiB)
    await writer.write(rest)
    assert await writer.commit() == 5 * MiB
    await writer.close()
    assert await read_all(store.read_staging(key)) == first + rest


async def test_filesystem_failure_outside_writes_is_a_storage_error(tmp_path: Path) -> None:
    """A store directory that cannot be made (a file is in the way) is a StorageError, not an OSError."""
    (tmp_path / "blocked").write_bytes(b"")
    store = FilesystemStore(tmp_path / "blocked" / "objects")
    with pytest.raises(StorageError):
        await store.open()


# S3: error answers of a (fake) full S3 server ----------------------------------------------------------

FULL_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>{code}</Code><Message>full</Message><Key>k</Key><BucketName>b</BucketName>
<Resource>/b/k</Resource><RequestId>1</RequestId><HostId>1</HostId></Error>"""


@contextlib.asynccontextmanager
async def answering(status: int, body: str | None) -> AsyncIterator[str]:
    """A loopback HTTP server that answers every request with ``status`` (and an S3 error document)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if body is None:
            return web.Response(status=status, text="storage full", content_type="text/plain")
        return web.Response(status=status, text=body, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (507, FULL_XML.format(code="XMinioStorageFull")),  # MinIO: no drive space left
        (403, FULL_XML.format(code="QuotaExceeded")),  # Ceph RGW: bucket or user quota
        (400, FULL_XML.format(code="XMinioAdminBucketQuotaExceeded")),  # MinIO bucket quota
        (507, None),  # a proxy or server saying 507 without an S3 error document
    ],
)
async def test_s3_full_answers_are_out_of_space(status: int, body: str | None) -> None:
    """Every S3 way of saying "full" becomes OutOfSpace, on a part upload and on a commit alike."""
    async with answering(status, body) as endpoint:
        client = S3Client(endpoint, "key", "secret", "b", secure=False, region="us-east-1", timeout=10)
        store = S3Store(client)
        try:
            with pytest.raises(OutOfSpace):
                await client.put("k", b"x")
            with pytest.raises(OutOfSpace):
                await store.put_record(staging_key("C-1", "u1"), Record("cases/C-1/f_1"), b"tail")
            with pytest.raises(OutOfSpace):
                await client.upload_part("k", "upload", 1, b"x")
        finally:
            await store.close()


async def test_s3_other_failures_are_storage_errors() -> None:
    """An S3 error that is not about space stays a plain StorageError (503)."""
    async with answering(400, FULL_XML.format(code="InvalidArgument")) as endpoint:
        client = S3Client(endpoint, "key", "secret", "b", secure=False, region="us-east-1", timeout=10)
        try:
            with pytest.raises(StorageError) as caught:
                await client.put("k", b"x")
            assert not isinstance(caught.value, OutOfSpace) and caught.value.status == 503
        finally:
            client.close()


# S3: Content-MD5 against the real server ---------------------------------------------------------------


def corrupting(client: S3Client, names: Callable[[str], bool]) -> list[str]:
    """Flip a byte of every body ``client`` sends for an object whose name passes ``names`` (after the
    gateway computed its checksum: damage on the way to the store). Returns the names it damaged."""
    damaged: list[str] = []
    send = client.minio._put_object

    def put_object(bucket: str, name: str, body: bytes | Body, *args: Any, **kwargs: Any) -> Any:
        if names(name) and body:
            damaged.append(name)
            whole = b"".join(body.blocks()) if isinstance(body, Body) else body
            body = bytes([whole[0] ^ 0x01]) + whole[1:]
        return send(bucket, name, body, *args, **kwargs)

    client.minio._put_object = put_object  # type: ignore[method-assign]
    return damaged


async def test_s3_refuses_a_part_damaged_on_the_way(s3_server: S3Server, s3_bucket: str) -> None:
    """A part of the upload's multipart upload whose body no longer matches its checksum (the SHA-256 the
    gateway computed and signed) is refused by the real S3 server: the commit fails, the committed size
    stays, the damaged part is never part of the file, and the upload then resumes to the right bytes."""
    store = s3_server.store(s3_bucket)
    await store.open()
    try:
        key = staging_key("C-md5", "u1")
        target = key + DATA_SUFFIX  # staged without a target: the multipart upload is for K/data
        await stage(store, key, data(MiB, 1))
        damaged = corrupting(store.client, lambda name: name == target)
        writer = await store.open_writer(key, MiB)
        try:
            with pytest.raises(StorageError) as caught:
                await writer.write(data(17 * MiB, 2))  # fills the first 16 MiB part
                await writer.commit()
            await writer.rollback()
        finally:
            await writer.close()
        assert damaged == [target]
        assert "Content-MD5" in caught.value.message
        assert await store.staging_size(key) == MiB
        del store.client.minio._put_object  # the fault is over: the class's method again
        writer = await store.open_writer(key, MiB)
        await writer.write(data(17 * MiB, 2))
        assert await writer.commit() == 18 * MiB
        await writer.close()
        assert await read_all(store.read_staging(key)) == data(MiB, 1) + data(17 * MiB, 2)
        await store.delete_staging(key)
        assert await store.list_keys(key) == []
    finally:
        await store.close()


async def test_s3_refuses_a_multipart_part_damaged_on_the_way(s3_server: S3Server, s3_bucket: str) -> None:
    """UploadPart (also used when assembling short pieces) carries its signed SHA-256: a damaged body is
    refused."""
    store = s3_server.store(s3_bucket)
    await store.open()
    client = store.client
    name = "cases/C-md5/f_mp"
    upload_id = await client.create_multipart(name, {}, {})
    try:
        corrupting(client, lambda n: n == name)
        with pytest.raises(StorageError) as caught:
            await client.upload_part(name, upload_id, 1, data(MiB, 3))
        assert "Content-MD5" in caught.value.message
    finally:
        await client.abort_multipart(name, upload_id)
        await store.close()


async def test_s3_refuses_a_part_whose_sha256_is_not_its_own(s3_server: S3Server, s3_bucket: str) -> None:
    """The SHA-256 the S3 writer passes with a part (computed while the part filled) is checked by the real
    S3 server: a digest that does not match the bytes sent (as for a part changed after it was hashed) is
    refused with the checksum error; the right one is accepted and the part is stored as sent."""
    store = s3_server.store(s3_bucket)
    await store.open()
    client = store.client
    name = "cases/C-sha/f_mp"
    body = data(MiB, 4)
    upload_id = await client.create_multipart(name, {}, {})
    try:
        wrong = hashlib.sha256(body[:-1] + bytes([body[-1] ^ 0x01])).hexdigest()
        with pytest.raises(StorageError) as caught:
            await client.upload_part(name, upload_id, 1, Body([body]), wrong)
        assert "did not match its checksum" in caught.value.message
        part = await client.upload_part(name, upload_id, 1, Body([body]), hashlib.sha256(body).hexdigest())
        await client.complete_multipart(name, upload_id, [part])
        assert await client.get_bytes(name, 0, 0) == body
    finally:
        await client.abort_multipart(name, upload_id)
        await client.delete([(name, None)])
        await store.close()


# S3: a bucket quota on the real server ------------------------------------------------------------------


def radosgw_admin(*args: str) -> None:
    """Run ``radosgw-admin`` against the test run's Ceph cluster (``EFTGW_TEST_CEPH_CONF``)."""
    conf = os.environ.get("EFTGW_TEST_CEPH_CONF")
    if not conf:
        pytest.fail("EFTGW_TEST_CEPH_CONF is not set: start the S3 server with scripts/ceph-rgw start")
    subprocess.run(
        ["radosgw-admin", *args],
        env={**os.environ, "CEPH_CONF": conf},
        check=True,
        capture_output=True,
        timeout=60,
    )


async def test_s3_bucket_quota_is_out_of_space_and_the_upload_resumes(
    s3_server: S3Server, new_bucket: Callable[[], str]
) -> None:
    """Over a bucket quota the real RGW answers QuotaExceeded: the part upload fails with OutOfSpace, the
    committed size stays, and once the quota is lifted the same staging data continues."""
    bucket = new_bucket()
    store = s3_server.store(bucket)
    await store.open()
    try:
        radosgw_admin("quota", "set", "--quota-scope=bucket", f"--bucket={bucket}", "--max-size=4194304")
        radosgw_admin("quota", "enable", "--quota-scope=bucket", f"--bucket={bucket}")
        key = staging_key("C-quota", "u1")
        first, rest = data(MiB, 5), data(9 * MiB, 6)
        assert await stage(store, key, first) == MiB
        writer = await store.open_writer(key, MiB)
        try:
            with pytest.raises(OutOfSpace) as caught:
                await writer.write(rest)  # 10 MiB committed: more than the whole quota
                await writer.commit()
            await writer.rollback()
        finally:
            await writer.close()
        assert "QuotaExceeded" in caught.value.message
        assert await store.staging_size(key) == MiB
        radosgw_admin("quota", "disable", "--quota-scope=bucket", f"--bucket={bucket}")
        writer = await store.open_writer(key, MiB)
        await writer.write(rest)
        assert await writer.commit() == 10 * MiB
        await writer.close()
        assert await read_all(store.read_staging(key)) == first + rest
    finally:
        await store.close()
