"""Uploads through the core services on the multi-node backend: two gateway "nodes" (each its own store
client, engine and upload locks) share one real PostgreSQL database and one real S3 bucket (Ceph RGW)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from eftgw.config import Settings
from eftgw.errors import ChecksumMismatch, OffsetMismatch, UploadLocked
from eftgw.gateway import Gateway
from eftgw.hashing import ChunkChecksum
from eftgw.metadata.locks import SqlUploadLocks
from eftgw.model import SYSTEM, Principal, Role
from eftgw.orphans import sweep_orphans
from eftgw.storage import staging_key
from tests.pg import throwaway_databases
from tests.storage.conftest import S3Server
from tests.storage.test_conformance import MiB, data, read_all


async def body(payload: bytes, *, pause: float = 0.0, forever: bool = False) -> AsyncIterator[bytes]:
    """A request body in 1 MiB chunks; ``forever`` keeps sending (a slow client) until the reader stops."""
    position = 0
    while position < len(payload) or forever:
        yield payload[position : position + MiB] if position < len(payload) else b"\0" * MiB
        position += MiB
        if pause:
            await asyncio.sleep(pause)


@pytest.fixture
async def region(
    tmp_path: Path,
    s3_server: S3Server,
    s3_bucket: str,
    case_id: str,
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two started gateway nodes of one region; the test's case is open."""
    async with throwaway_databases() as make_database:
        url = await make_database()
        async for pair in _nodes(tmp_path, s3_server, s3_bucket, url, case_id):
            yield pair


async def _nodes(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, url: str, case_id: str
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    nodes = []
    for name in ("a", "b"):
        settings = Settings(
            data_dir=tmp_path / name,
            database_url=url,
            storage="s3",
            s3_endpoint=s3_server.endpoint,
            s3_access_key=SecretStr(s3_server.access_key),
            s3_secret_key=SecretStr(s3_server.secret_key),
            s3_bucket=s3_bucket,
            s3_secure=False,
        )
        node = Gateway.build(settings)
        await node.start()
        nodes.append(node)
    assert all(isinstance(n.locks, SqlUploadLocks) for n in nodes)
    await nodes[0].cases.open(SYSTEM, case_id)
    yield nodes[0], nodes[1]
    for node in nodes:
        await node.close()


async def test_an_upload_started_on_one_node_finishes_on_the_other(
    region: tuple[Gateway, Gateway], case_id: str
) -> None:
    """Node B resumes what node A started; the file's bytes and SHA-256 are whole and staging data is gone."""
    C, ALICE = case_id, Principal(user="alice", role=Role.CUSTOMER, case_id=case_id)
    a, b = region
    payload = data(20 * MiB + 3)
    async with asyncio.timeout(120):
        upload = await a.uploads.create(ALICE, C, length=len(payload), metadata={"filename": "dump.bin"})
        done = await a.uploads.append(ALICE, C, upload.id, 0, body(payload[: 9 * MiB]))
        assert done.offset == 9 * MiB
        finished = await b.uploads.append(ALICE, C, upload.id, 9 * MiB, body(payload[9 * MiB :]))
        assert finished.offset == len(payload)
        [record] = await a.files.list(ALICE, C)
        assert record.sha256 == hashlib.sha256(payload).hexdigest()
        download = await a.files.open(ALICE, C, record.id)
        assert await read_all(download.stream) == payload
        assert (await a.store.object_tags(record.object_key))["sha256"] == record.sha256
        assert await a.store.list_keys(f"uploads/{C}/") == []


async def test_a_newer_request_on_another_node_takes_the_upload_over(
    region: tuple[Gateway, Gateway], case_id: str
) -> None:
    """A slow request on node A is stopped by a newer one on node B; A's bytes are kept and B resumes."""
    C, ALICE = case_id, Principal(user="alice", role=Role.CUSTOMER, case_id=case_id)
    a, b = region
    payload = data(30 * MiB)
    async with asyncio.timeout(120):
        upload = await a.uploads.create(ALICE, C, length=len(payload), metadata={})
        slow = asyncio.create_task(a.uploads.append(ALICE, C, upload.id, 0, body(payload, pause=0.2)))
        await asyncio.sleep(2.5)
        with pytest.raises(OffsetMismatch):  # the client's offset is stale once A commits what it received
            await b.uploads.append(ALICE, C, upload.id, 0, body(payload))
        with pytest.raises(UploadLocked):
            await slow
        kept = (await b.uploads.get(ALICE, C, upload.id)).offset
        assert 0 < kept < len(payload)
        assert await read_all(b.store.read_staging(upload.staging_key)) == payload[:kept]
        await b.uploads.append(ALICE, C, upload.id, kept, body(payload[kept:]))
        [record] = await b.files.list(ALICE, C)
        assert record.sha256 == hashlib.sha256(payload).hexdigest()


async def test_a_chunk_failing_its_checksum_leaves_no_parts_in_s3(
    region: tuple[Gateway, Gateway], case_id: str
) -> None:
    """A 20 MiB chunk with a wrong checksum is discarded: the offset stays, its uploaded parts are deleted."""
    C, ALICE = case_id, Principal(user="alice", role=Role.CUSTOMER, case_id=case_id)
    a, _ = region
    async with asyncio.timeout(120):
        upload = await a.uploads.create(ALICE, C, length=40 * MiB, metadata={})
        await a.uploads.append(ALICE, C, upload.id, 0, body(data(3 * MiB)))
        wrong = ChunkChecksum("sha256", hashlib.sha256(b"something else").digest())
        with pytest.raises(ChecksumMismatch):
            await a.uploads.append(ALICE, C, upload.id, 3 * MiB, body(data(20 * MiB, 2)), checksum=wrong)
        assert (await a.uploads.get(ALICE, C, upload.id)).offset == 3 * MiB
        assert await a.store.list_keys(f"uploads/{C}/") == [upload.staging_key]
        assert await a.store.staging_size(upload.staging_key) == 3 * MiB


async def test_terminated_uploads_and_orphans_leave_nothing(
    region: tuple[Gateway, Gateway], case_id: str
) -> None:
    """Terminating deletes every staging object; the orphan sweep removes staging data no upload knows."""
    C, ALICE = case_id, Principal(user="alice", role=Role.CUSTOMER, case_id=case_id)
    a, b = region
    async with asyncio.timeout(120):
        upload = await a.uploads.create(ALICE, C, length=40 * MiB, metadata={})
        await a.uploads.append(ALICE, C, upload.id, 0, body(data(17 * MiB)))
        await b.uploads.terminate(ALICE, C, upload.id)
        assert await a.store.list_keys(f"uploads/{C}/") == []
        live = await a.uploads.create(ALICE, C, length=10, metadata={})
        orphan = staging_key(C, "crashed-before-its-row")
        await a.store.create_staging(orphan)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
        removed = await sweep_orphans(a.repo, a.store, later)  # the whole bucket: other tests' leftovers too
        assert orphan in removed and live.staging_key not in removed
        assert await a.store.list_keys(f"uploads/{C}/") == [live.staging_key]
