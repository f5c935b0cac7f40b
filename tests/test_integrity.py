"""Stored files are checked against their recorded SHA-256: a whole-file download of a damaged file never
ends cleanly (logged, counted in /metrics), and ``eftgw verify`` reports damaged and missing files as JSON.

Runs on the backend ``EFTGW_TEST_BACKEND`` selects (filesystem, or S3 where the byte is flipped by
overwriting the object through the S3 API).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from eftgw.gateway import build_store
from eftgw.storage import ObjectStore, StorageError, object_key
from eftgw.storage.filesystem import FilesystemStore
from eftgw.storage.s3 import S3Store
from tests.http.test_files_api import auth, upload
from tests.support import RunningGateway, gateway_process, http_session, tus_headers

MiB = 1024 * 1024
DATA = os.urandom(3 * MiB + 4321)


def _flip_in_file(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        old = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([old[0] ^ 0x01]))


async def flip_byte(store: ObjectStore, key: str, offset: int) -> None:
    """Change one stored byte behind the gateway's back (a failing disk, a bad storage layer)."""
    if isinstance(store, FilesystemStore):
        await asyncio.to_thread(_flip_in_file, store.root / key, offset)
        return
    assert isinstance(store, S3Store)
    body = bytearray(await store.client.get_bytes(key, 0, 0))
    body[offset] ^= 0x01
    await store.client.put(key, bytes(body))


async def upload_to(url: str, token: str, case_id: str, data: bytes, name: str) -> str:
    """Upload ``data`` to a gateway process (tus creation-with-upload); return the new file's id."""
    headers = tus_headers(
        token,
        Upload_Length=str(len(data)),
        Upload_Metadata="filename " + base64.b64encode(name.encode()).decode(),
        Content_Type="application/offset+octet-stream",
    )
    async with http_session() as s:
        async with s.post(
            f"{url}/api/v1/cases/{case_id}/uploads", data=io.BytesIO(data), headers=headers
        ) as resp:
            assert resp.status == 201 and resp.headers["Upload-Offset"] == str(len(data))
        async with s.get(f"{url}/api/v1/cases/{case_id}/files", headers=auth(token)) as resp:
            return next(f["id"] for f in await resp.json() if f["name"] == name)


def integrity_failures(metrics_text: str) -> float:
    match = re.search(r'^eftgw_integrity_failures_total\{found_by="download"\} (\S+)$', metrics_text, re.M)
    return float(match.group(1)) if match else 0.0


async def metrics_of(gw: RunningGateway) -> str:
    async with http_session() as s, s.get(f"{gw.url}/metrics") as resp:
        return await resp.text()


async def test_damaged_file_download_is_cut_logged_and_counted(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A flipped byte: the whole-file GET fails on the client (never a clean 200 end), the gateway logs the
    case and file id at error level without the name, and eftgw_integrity_failures_total goes up by one."""
    caplog.set_level(logging.ERROR, logger="eftgw.scrub")
    file_id = await upload(gw, DATA, "secret-name.log")
    await flip_byte(gw.gateway.store, object_key("C-1", file_id), len(DATA) // 2)
    before = integrity_failures(await metrics_of(gw))
    engineer = gw.token(None, role="engineer", user="eve")
    url = f"{gw.url}/api/v1/cases/C-1/files/{file_id}/content"
    received = bytearray()
    async with http_session() as s, s.get(url, headers=auth(engineer)) as resp:
        assert resp.status == 200 and resp.content_length == len(DATA)
        with pytest.raises(aiohttp.ClientPayloadError):
            async for block in resp.content.iter_any():
                received += block
    assert len(received) < len(DATA)
    assert integrity_failures(await metrics_of(gw)) == before + 1
    (record,) = [r for r in caplog.records if r.name == "eftgw.scrub"]
    assert record.levelno == logging.ERROR
    assert file_id in record.getMessage() and "C-1" in record.getMessage()
    assert "secret-name" not in caplog.text
    # The gateway stays up and serves the next request.
    async with http_session() as s, s.get(f"{gw.url}/healthz") as resp:
        assert resp.status == 200


async def test_intact_download_and_ranges_of_a_damaged_file(gw: RunningGateway) -> None:
    """An intact file downloads whole; ranges of a damaged file are served (only whole files are checked)."""
    intact = await upload(gw, DATA, "intact.log")
    damaged = await upload(gw, DATA[::-1], "damaged.log")
    await flip_byte(gw.gateway.store, object_key("C-1", damaged), 10)
    engineer = gw.token(None, role="engineer", user="eve")
    base = f"{gw.url}/api/v1/cases/C-1/files"
    async with http_session() as s:
        async with s.get(f"{base}/{intact}/content", headers=auth(engineer)) as resp:
            assert resp.status == 200 and await resp.read() == DATA
        async with s.get(f"{base}/{damaged}/content", headers=auth(engineer, Range="bytes=100-")) as resp:
            assert resp.status == 206 and await resp.read() == DATA[::-1][100:]


async def test_empty_file_downloads_cleanly(gw: RunningGateway) -> None:
    """A zero-byte file passes the check (the SHA-256 of nothing) and downloads as 200 with no body."""
    file_id = await upload(gw, b"", "empty.txt")
    engineer = gw.token(None, role="engineer", user="eve")
    async with (
        http_session() as s,
        s.get(f"{gw.url}/api/v1/cases/C-1/files/{file_id}/content", headers=auth(engineer)) as resp,
    ):
        assert resp.status == 200 and await resp.read() == b""


def test_verify_command_reports_damaged_and_missing_files(tmp_path: Path) -> None:
    """``eftgw verify`` re-hashes every stored file: clean data exits 0; a flipped byte and a deleted object
    are listed (case, file id, expected and actual SHA-256) and the exit code is 1; --case narrows it."""
    with gateway_process(tmp_path / "gw") as node:
        for case in ("C-A", "C-B"):
            node.open_case(case)
        ids = {
            "a1": asyncio.run(upload_to(node.url, node.token("C-A"), "C-A", DATA, "a1.log")),
            "a2": asyncio.run(upload_to(node.url, node.token("C-A"), "C-A", DATA[:MiB], "a2.log")),
            "b1": asyncio.run(upload_to(node.url, node.token("C-B"), "C-B", DATA[::-1], "b1.log")),
        }
        clean = node.cli("verify")
        report = json.loads(clean.stdout)
        assert clean.returncode == 0 and report["ok"] is True
        assert report["checked"] == 3 and report["bytes"] == 2 * len(DATA) + MiB
        assert report["damaged"] == [] and report["missing"] == []

        async def damage() -> None:
            store = build_store(node.settings())
            await store.open()
            try:
                await flip_byte(store, object_key("C-A", ids["a1"]), 12345)
                await store.delete_object(object_key("C-B", ids["b1"]))
            finally:
                await store.close()

        asyncio.run(damage())
        found = node.cli("verify", check=False)
        assert found.returncode == 1, found.stderr
        report = json.loads(found.stdout)
        assert report["ok"] is False and report["checked"] == 2
        (damaged,) = report["damaged"]
        assert damaged["case"] == "C-A" and damaged["file"] == ids["a1"]
        assert damaged["expected_sha256"] == hashlib.sha256(DATA).hexdigest()
        corrupt = bytearray(DATA)
        corrupt[12345] ^= 0x01
        assert damaged["actual_sha256"] == hashlib.sha256(corrupt).hexdigest()
        assert [(m["case"], m["file"]) for m in report["missing"]] == [("C-B", ids["b1"])]

        only_b = json.loads(node.cli("verify", "--case", "C-B", check=False).stdout)
        assert only_b["checked"] == 0 and only_b["damaged"] == [] and len(only_b["missing"]) == 1
        unknown = node.cli("verify", "--case", "C-NOPE", check=False)
        assert unknown.returncode == 2 and "not open" in unknown.stderr


async def test_store_failing_midway_cuts_the_download(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the store fails after the headers went out (here after 1 MiB), the connection is cut: the client
    sees a failed transfer, never a second response written into the body; the gateway serves on."""
    caplog.set_level(logging.ERROR, logger="eftgw.http.files")
    file_id = await upload(gw, DATA, "midway.log")
    store = gw.gateway.store
    reading = store.read_object

    async def failing(key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        async for block in reading(key, start, min(end or len(DATA), start + MiB)):
            yield block
        raise StorageError("The storage directory failed (read: Input/output error).")

    monkeypatch.setattr(store, "read_object", failing)
    engineer = gw.token(None, role="engineer", user="eve")
    url = f"{gw.url}/api/v1/cases/C-1/files/{file_id}/content"
    for headers in (auth(engineer), auth(engineer, Range="bytes=10-")):
        received = bytearray()
        stalled = aiohttp.ClientTimeout(sock_read=60)  # a connection left open is a failure, not a hang
        async with http_session(timeout=stalled) as s, s.get(url, headers=headers) as resp:
            assert resp.status in (200, 206)
            with pytest.raises(aiohttp.ClientPayloadError):
                async for block in resp.content.iter_any():
                    received += block
        assert len(received) <= MiB and b"internal_error" not in received
    assert "failed midway; connection cut" in caplog.text
    monkeypatch.setattr(store, "read_object", reading)
    async with http_session() as s, s.get(url, headers=auth(engineer)) as resp:
        assert resp.status == 200 and await resp.read() == DATA
