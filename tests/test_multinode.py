"""Several gateway processes of one region share a real PostgreSQL database and a real S3 bucket (Ceph RGW):
any node serves any request of any upload, a node killed mid-upload costs only a resume on another, two
nodes never interleave writes to one upload, and nothing is left in the bucket after cancellations."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from minio import Minio

from tests.support import GatewayProcess, http_session, on_node, tus_headers, two_nodes

pytestmark = pytest.mark.once

OCTETS = "application/offset+octet-stream"
MiB = 1024 * 1024


@pytest.fixture
def region(tmp_path: Path) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two started nodes sharing a PostgreSQL database, an S3 bucket and the issuer key."""
    with two_nodes(tmp_path, "s3pg") as started:
        yield started


def admin_of(node: GatewayProcess) -> tuple[Minio, str]:
    env = node.env
    client = Minio(
        env["EFTGW_S3_ENDPOINT"], env["EFTGW_S3_ACCESS_KEY"], env["EFTGW_S3_SECRET_KEY"], secure=False
    )
    return client, env["EFTGW_S3_BUCKET"]


async def create_upload(node: GatewayProcess, token: str, length: int) -> str:
    async with (
        http_session() as s,
        s.post(
            f"{node.url}/api/v1/cases/C-1/uploads", headers=tus_headers(token, Upload_Length=str(length))
        ) as resp,
    ):
        assert resp.status == 201
        return resp.headers["Location"]


async def head_offset(url: str, token: str) -> int:
    async with http_session() as s, s.head(url, headers=tus_headers(token)) as resp:
        assert resp.status == 200
        return int(resp.headers["Upload-Offset"])


async def files_of(node: GatewayProcess, token: str) -> list[dict]:
    async with (
        http_session() as s,
        s.get(f"{node.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return await resp.json()


async def test_upload_started_on_a_killed_node_completes_on_the_other(region) -> None:
    """Chunks acknowledged by node A survive its kill -9; node B resumes at that offset and finishes."""
    a, b = region
    a.open_case("C-1")
    token = a.token("C-1")
    data = os.urandom(24 * MiB + 5)
    url = await create_upload(a, token, len(data))
    acked = 0
    async with http_session() as s:
        for _ in range(2):
            h = tus_headers(token, Upload_Offset=str(acked), Content_Type=OCTETS)
            async with s.patch(url, data=io.BytesIO(data[acked : acked + 7 * MiB]), headers=h) as resp:
                assert resp.status == 204
                acked = int(resp.headers["Upload-Offset"])
    a.kill9()
    assert await head_offset(on_node(b, url), token) == acked == 14 * MiB
    async with http_session() as s:
        h = tus_headers(token, Upload_Offset=str(acked), Content_Type=OCTETS)
        async with s.patch(on_node(b, url), data=io.BytesIO(data[acked:]), headers=h) as resp:
            assert resp.status == 204
    (record,) = await files_of(b, token)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    async with (
        http_session() as s,
        s.get(
            f"{b.url}/api/v1/cases/C-1/files/{record['id']}/content",
            headers={"Authorization": f"Bearer {token}", "Range": f"bytes={10 * MiB}-"},
        ) as resp,
    ):
        assert resp.status == 206 and await resp.read() == data[10 * MiB :]


async def test_patches_to_two_nodes_at_once_never_interleave(region) -> None:
    """Two slow PATCHes of different bytes to two nodes: what is stored is a prefix of one of them only."""
    a, b = region
    a.open_case("C-1")
    token = a.token("C-1")
    length = 12 * MiB
    url = await create_upload(a, token, length)

    def slow(letter: bytes):
        async def body():
            for _ in range(12):
                yield letter * MiB
                await asyncio.sleep(0.15)

        return body()

    async def send(node: GatewayProcess, letter: bytes) -> int:
        h = tus_headers(token, Upload_Offset="0", Content_Type=OCTETS, Content_Length=str(length))
        async with http_session() as s:
            try:
                async with s.patch(on_node(node, url), data=slow(letter), headers=h) as resp:
                    return resp.status
            except Exception:
                return -1  # the node that was taken over may close the connection

    statuses = await asyncio.gather(send(a, b"A"), asyncio.sleep(0.4, result=None), send(b, b"B"))
    assert 204 in statuses or 409 in statuses or 423 in statuses
    offset = await head_offset(on_node(b, url), token)
    async with http_session() as s:
        h = tus_headers(token, Upload_Offset=str(offset), Content_Type=OCTETS)
        async with s.patch(on_node(a, url), data=io.BytesIO(b"C" * (length - offset)), headers=h) as resp:
            assert resp.status == 204
    (record,) = await files_of(a, token)
    async with (
        http_session() as s,
        s.get(
            f"{a.url}/api/v1/cases/C-1/files/{record['id']}/content",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        stored = await resp.read()
    prefix = stored[:offset]
    assert prefix in (b"A" * offset, b"B" * offset), "writes of two nodes interleaved"
    assert stored[offset:] == b"C" * (length - offset)


async def test_cancelled_expired_and_crashed_uploads_leave_nothing_in_the_bucket(region) -> None:
    """Termination, expiry and a crash followed by the orphan sweep: no objects, no multipart uploads left."""
    a, b = region
    a.open_case("C-1")
    token = a.token("C-1")
    admin, bucket = admin_of(a)
    async with http_session() as s:
        terminated = await create_upload(a, token, 20 * MiB)
        h = tus_headers(token, Upload_Offset="0", Content_Type=OCTETS)
        async with s.patch(terminated, data=io.BytesIO(os.urandom(9 * MiB)), headers=h) as resp:
            assert resp.status == 204
        async with s.delete(on_node(b, terminated), headers=tus_headers(token)) as resp:
            assert resp.status == 204
        idle = await create_upload(b, token, 20 * MiB)
        async with s.patch(idle, data=io.BytesIO(os.urandom(9 * MiB)), headers=h) as resp:
            assert resp.status == 204
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=8)).isoformat()
    result = json.loads(b.cli("retention", "run", "--now", later, "--json").stdout)
    assert result["expired_uploads"] == 1
    crashed = await create_upload(a, token, 30 * MiB)

    async def endless():
        while True:  # slower than the node can take it: the node is killed well before 30 MiB
            yield os.urandom(MiB)
            await asyncio.sleep(0.15)

    async with http_session() as s:
        h = tus_headers(token, Upload_Offset="0", Content_Type=OCTETS)
        patching = asyncio.ensure_future(s.patch(crashed, data=endless(), headers=h))
        await asyncio.sleep(1.5)
        a.kill9()
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            response = await patching
            response.release()
            raise AssertionError(f"the PATCH ended with {response.status} before the node was killed")
    # The crashed node's upload is then cancelled on the other node; its parts must all go.
    async with http_session() as s, s.delete(on_node(b, crashed), headers=tus_headers(token)) as resp:
        assert resp.status == 204
    # Parts the killed node had in flight are orphans now; the sweep (with no grace) removes them.
    sweep = b.cli("orphans", "sweep", "--grace", "0", check=False)
    assert sweep.returncode == 0, sweep.stderr
    left = list(admin.list_objects(bucket, prefix="uploads/", recursive=True, include_version=True))
    unfinished = admin._list_multipart_uploads(bucket).uploads
    assert left == [] and unfinished == [], ([o.object_name for o in left], unfinished)
