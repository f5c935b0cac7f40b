"""Two real gateway processes sharing one database and one store: whichever node continues an upload continues
its whole-file digests from the state committed with the offset, reading back none of the stored bytes, and
never from a state that no longer describes the stored bytes (after a checksum rollback, a truncate, or the
other node's writes).

Both multi-node set-ups run: the embedded SQLite database and a shared directory, and PostgreSQL with S3
(Ceph RGW). Re-read bytes are read from each node's ``/metrics`` (``eftgw_digest_reread_bytes_total``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
import xxhash
from asyncssh import FXF_CREAT, FXF_WRITE

from tests.sftp.sftp_support import Account, open_with_flags, paramiko_sftp
from tests.support import GatewayProcess, http_session, on_node, tus_headers, two_nodes

pytestmark = pytest.mark.once

OCTETS = "application/offset+octet-stream"
MiB = 1024 * 1024


@pytest.fixture(params=["sqlite-dir", "s3pg"])
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two started nodes with their own data dirs, sharing database, store and the issuer key."""
    with two_nodes(tmp_path, request.param) as started:
        yield started


async def reread_bytes(node: GatewayProcess) -> float:
    """The node's ``eftgw_digest_reread_bytes_total``, from its ``/metrics``."""
    async with http_session() as s, s.get(f"{node.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    (line,) = [x for x in text.splitlines() if x.startswith("eftgw_digest_reread_bytes_total ")]
    return float(line.split()[1])


async def files_of(node: GatewayProcess, token: str) -> list[dict]:
    async with (
        http_session() as s,
        s.get(f"{node.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        assert resp.status == 200
        return await resp.json()


async def test_16_patches_alternating_two_nodes_reread_nothing_and_record_the_right_digests(nodes) -> None:
    """64 MiB in 16 PATCHes, each to the other node than the one before, with a chunk refused for its checksum
    (460) in between: neither node reads back a stored byte to hash, and the file has the right SHA-256 and
    xxh128."""
    a, b = nodes
    a.open_case("C-1")
    token = a.token("C-1")
    data = secrets.token_bytes(64 * MiB)
    chunk = 4 * MiB
    async with http_session() as s:
        h = tus_headers(token, Upload_Length=str(len(data)), Upload_Metadata="filename " + "YmlnLmJpbg==")
        async with s.post(f"{a.url}/api/v1/cases/C-1/uploads", headers=h) as resp:
            assert resp.status == 201
            url = resp.headers["Location"]
        for i, offset in enumerate(range(0, len(data), chunk)):
            node = (a, b)[i % 2]
            if i == 7:  # a corrupted chunk to the next node: refused and rolled back there
                bad = base64.b64encode(hashlib.sha1(b"not this").digest()).decode()
                h = tus_headers(
                    token, Upload_Offset=str(offset), Content_Type=OCTETS, Upload_Checksum=f"sha1 {bad}"
                )
                async with s.patch(
                    on_node((a, b)[(i + 1) % 2], url), data=io.BytesIO(b"\xff" * chunk), headers=h
                ) as resp:
                    assert resp.status == 460
            h = tus_headers(token, Upload_Offset=str(offset), Content_Type=OCTETS)
            async with s.patch(
                on_node(node, url), data=io.BytesIO(data[offset : offset + chunk]), headers=h
            ) as resp:
                assert resp.status == 204, await resp.text()
                assert int(resp.headers["Upload-Offset"]) == offset + chunk
    (record,) = await files_of(b, token)
    assert record["size"] == len(data)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["xxh128"] == xxhash.xxh3_128(data).hexdigest()
    assert await reread_bytes(a) == 0
    assert await reread_bytes(b) == 0


def sftp_account(node: GatewayProcess) -> Account:
    issued = json.loads(node.cli("sftp-account", "create", "C-1").stdout)
    return Account(issued["username"], issued["password"], "C-1")


def append(client: paramiko.SFTPClient, name: str, data: bytes) -> None:
    """Continue the upload in progress ``name`` at its durable size (no TRUNC) and close the handle."""
    handle = open_with_flags(client, name, FXF_WRITE | FXF_CREAT)
    size = handle.stat().st_size
    handle.seek(size)
    handle.write(data)
    handle.close()


async def test_after_a_truncate_on_one_node_the_other_never_continues_from_its_old_digests(nodes) -> None:
    """Node A writes 3 MiB; node B truncates the upload to 1 MiB and writes 2 MiB of other bytes; A then
    continues and finishes. The file's SHA-256 is that of the bytes stored, not of what A had hashed before
    the truncate; the only bytes re-read are B's 1 MiB after the truncate (a truncate leaves no state)."""
    a, b = nodes
    a.open_case("C-1")
    account = sftp_account(a)
    first, second, third = b"A" * 3 * MiB, b"B" * 2 * MiB, b"C" * MiB
    name = "logs.tar.filepart"  # a temporary name: closing the handle keeps the upload in progress
    with paramiko_sftp(a.sftp_port, account) as (_t, sftp):
        append(sftp, name, first)
        assert sftp.stat(name).st_size == 3 * MiB
    with paramiko_sftp(b.sftp_port, account) as (_t, sftp):
        sftp.truncate(name, MiB)
        assert sftp.stat(name).st_size == MiB
        append(sftp, name, second)
        assert sftp.stat(name).st_size == 3 * MiB  # the same size as A left it: only the bytes differ
    with paramiko_sftp(a.sftp_port, account) as (_t, sftp):
        append(sftp, name, third)
        sftp.posix_rename(name, "logs.tar")
    stored = first[:MiB] + second + third
    (record,) = await files_of(a, a.token("C-1"))
    assert (record["name"], record["size"]) == ("logs.tar", len(stored))
    assert record["sha256"] == hashlib.sha256(stored).hexdigest()
    assert record["xxh128"] == xxhash.xxh3_128(stored).hexdigest()
    assert await reread_bytes(a) == 0
    assert await reread_bytes(b) == MiB
