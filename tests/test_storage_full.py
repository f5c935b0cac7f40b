"""A full disk is a clear, retryable answer, not a crash: a real gateway process whose object directory is a
small tmpfs answers 507 with ``Retry-After`` and the durable offset (tus) or an SFTP failure saying so, keeps
serving, keeps nothing past the acknowledged offset, and the same upload resumes to the right SHA-256 once
space returns.

The tmpfs is the ``small_disk`` fixture (``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
from pathlib import Path

import paramiko
import pytest
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

from tests.support import GatewayProcess, fill_disk, gateway_process, http_session, tus_headers

MiB = 1024 * 1024
OCTETS = "application/offset+octet-stream"


def tuspy(node: GatewayProcess, token: str, data: bytes, url: str | None = None) -> tus_client.Uploader:
    client = tus_client.TusClient(
        f"{node.url}/api/v1/cases/C-1/uploads", headers={"Authorization": f"Bearer {token}"}
    )
    return client.uploader(
        file_stream=io.BytesIO(data), chunk_size=MiB, metadata={"filename": "full.bin"}, url=url
    )


def test_disk_full_answers_507_keeps_the_offset_and_resumes(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tuspy fills the disk: 507 (not 500) with Retry-After, the message and Upload-Offset naming the durable
    offset; the staging file holds exactly that many bytes; /healthz answers; after the filler is deleted the
    same upload resumes and the file's SHA-256 is right."""
    data = os.urandom(6 * MiB + 777)
    env = {"EFTGW_STORAGE": "filesystem", "EFTGW_STORAGE_DIR": str(small_disk)}
    with gateway_process(tmp_path / "gw", env) as node:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(node.data_dir / "tls" / "tls-cert.pem"))
        node.open_case("C-1")
        token = node.token("C-1")
        filler = fill_disk(small_disk, leave=2 * MiB + MiB // 2)

        uploader = tuspy(node, token, data)
        with pytest.raises(TusCommunicationError) as failed:
            uploader.upload()
        assert failed.value.status_code == 507
        url = str(uploader.url)
        upload_id = url.rsplit("/", 1)[1]
        staged = small_disk / "uploads" / "C-1" / upload_id
        durable = uploader.offset
        assert durable == 2 * MiB  # two chunks fitted, the third did not
        assert staged.stat().st_size == durable  # the part of the third chunk that was written is gone

        async def probe() -> None:
            async with http_session() as s:
                patch = tus_headers(token, Upload_Offset=str(durable), Content_Type=OCTETS)
                async with s.patch(url, data=data[durable : durable + MiB], headers=patch) as resp:
                    assert resp.status == 507
                    body = await resp.json()
                    assert body["code"] == "storage_full"
                    assert f"your upload is kept at offset {durable}" in body["message"]
                    assert int(resp.headers["Retry-After"]) > 0
                    assert resp.headers["Upload-Offset"] == str(durable)
                async with s.head(url, headers=tus_headers(token)) as resp:
                    assert resp.headers["Upload-Offset"] == str(durable)
                async with s.get(f"{node.url}/healthz") as resp:
                    assert resp.status == 200

        asyncio.run(probe())
        assert staged.stat().st_size == durable

        filler.unlink()
        resumed = tuspy(node, token, data, url=url)
        assert resumed.offset == durable
        resumed.upload()

        async def listed() -> list[dict[str, object]]:
            async with (
                http_session() as s,
                s.get(
                    f"{node.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}
                ) as r,
            ):
                return list(await r.json())

        (record,) = asyncio.run(listed())
        assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
        stored = small_disk / "cases" / "C-1" / str(record["id"])
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == record["sha256"]
    log = node.log_path.read_text()
    assert "internal_error" not in log and "Traceback" not in log


def test_sftp_disk_full_is_a_clear_failure_and_the_upload_resumes(tmp_path: Path, small_disk: Path) -> None:
    """paramiko fills the disk over SFTP: the client gets SSH_FX_FAILURE saying the storage is full and the
    offset that is kept; stat reports exactly that; after space returns an append resumes it to the right
    SHA-256."""
    data = os.urandom(6 * MiB + 555)
    env = {"EFTGW_STORAGE": "filesystem", "EFTGW_STORAGE_DIR": str(small_disk)}
    with gateway_process(tmp_path / "gw", env) as node:
        node.open_case("C-1")
        account = json.loads(node.cli("sftp-account", "create", "C-1").stdout)
        filler = fill_disk(small_disk, leave=2 * MiB + MiB // 2)

        def connect() -> tuple[paramiko.Transport, paramiko.SFTPClient]:
            transport = paramiko.Transport(("127.0.0.1", node.sftp_port))
            transport.connect(username=account["username"], password=account["password"])
            client = paramiko.SFTPClient.from_transport(transport)
            assert client is not None
            client.get_channel().settimeout(60)
            return transport, client

        transport, sftp = connect()
        try:
            with pytest.raises(OSError) as failed, sftp.open("big.bin", "w") as handle:
                for start in range(0, len(data), 64 * 1024):
                    handle.write(data[start : start + 64 * 1024])
            message = str(failed.value)
            assert "storage is full" in message, message
            kept = int(re.search(r"kept at offset (\d+)", message).group(1))  # type: ignore[union-attr]
            assert 0 < kept < len(data)
            assert sftp.stat("big.bin").st_size == kept
        finally:
            transport.close()
        (staged,) = (small_disk / "uploads" / "C-1").iterdir()
        assert staged.stat().st_size == kept

        filler.unlink()
        transport, sftp = connect()
        try:
            with sftp.open("big.bin", "a") as handle:
                handle.write(data[kept:])
        finally:
            transport.close()

        token = node.token("C-1")

        async def listed() -> list[dict[str, object]]:
            async with (
                http_session() as s,
                s.get(
                    f"{node.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}
                ) as r,
            ):
                return list(await r.json())

        (record,) = asyncio.run(listed())
        assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
