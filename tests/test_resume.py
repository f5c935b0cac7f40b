"""Resumability: real tus clients resume, interrupted requests keep what arrived, concurrent writers never
interleave, and acknowledged bytes survive ``kill -9`` of the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import io
import os
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
from tusclient import client as tus_client
from tusclient.storage.filestorage import FileStorage

from tests.support import RunningGateway, client_ssl, gateway_process, http_session, tus_headers

OCTETS = "application/offset+octet-stream"


def cert_of(gw: RunningGateway) -> str:
    return str(gw.gateway.settings.resolved_data_dir / "tls" / "tls-cert.pem")


def tuspy_upload(url: str, token: str, path: Path, store: Path, cert: str, chunks: int | None) -> str:
    """Upload with tuspy, keeping the upload URL in a file store; ``chunks`` stops early (an interruption)."""
    os.environ["REQUESTS_CA_BUNDLE"] = cert  # verify the gateway's self-signed certificate for real
    client = tus_client.TusClient(url, headers={"Authorization": f"Bearer {token}"})
    storage = FileStorage(str(store))
    try:
        uploader = client.uploader(
            str(path),
            chunk_size=256 * 1024,
            metadata={"filename": path.name},
            store_url=True,
            url_storage=storage,
        )
        if chunks is None:
            uploader.upload()
        else:
            for _ in range(chunks):
                uploader.upload_chunk()
        return str(uploader.url)
    finally:
        storage._db.close()


# tuspy 1.1.0 opens the file by path for every chunk and leaves the handles to the garbage collector.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
async def test_tuspy_interrupted_then_resumed_from_stored_url(gw: RunningGateway, tmp_path: Path) -> None:
    """tuspy stops midway; a new client resumes from the stored URL; the download and SHA-256 match."""
    data = os.urandom(5 * 1024 * 1024 + 123)
    path = tmp_path / "diag.tar"
    path.write_bytes(data)
    store = tmp_path / "tus-urls.json"
    token = gw.token("C-1")
    first_url = await asyncio.to_thread(
        tuspy_upload, gw.uploads_url("C-1"), token, path, store, cert_of(gw), 7
    )
    async with http_session() as s, s.head(first_url, headers=tus_headers(token)) as resp:
        assert int(resp.headers["Upload-Offset"]) == 7 * 256 * 1024
    second_url = await asyncio.to_thread(
        tuspy_upload, gw.uploads_url("C-1"), token, path, store, cert_of(gw), None
    )
    assert second_url == first_url
    async with http_session() as s:
        async with s.get(
            f"{gw.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            (record,) = await resp.json()
        async with s.get(
            f"{gw.url}/api/v1/cases/C-1/files/{record['id']}/content",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            downloaded = await resp.read()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert downloaded == data
    audit = [e for e in await gw.gateway.repo.list_audit("C-1") if e.action == "upload.created"]
    assert len(audit) == 1  # the resume did not start a second upload
    gc.collect()  # collect tuspy's leaked handles here, under this test's warning filter


def _open_patch(url: str, token: str, offset: int, length: int, extra: str, first: bytes) -> ssl.SSLSocket:
    host, port = "127.0.0.1", int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    raw = socket.create_connection((host, port), timeout=10)
    tls = client_ssl().wrap_socket(raw, server_hostname=host)
    tls.sendall(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: {host}:{port}\r\nTus-Resumable: 1.0.0\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: {OCTETS}\r\nUpload-Offset: {offset}\r\n"
            f"{extra}Content-Length: {length}\r\n\r\n"
        ).encode()
        + first
    )
    return tls


async def raw_patch(
    url: str, token: str, offset: int, length: int, *, extra: str = "", first: bytes = b""
) -> ssl.SSLSocket:
    """Start a PATCH announcing ``length`` bytes on a raw TLS socket, so the test controls the body."""
    return await asyncio.to_thread(_open_patch, url, token, offset, length, extra, first)


async def new_upload(gw: RunningGateway, length: int) -> str:
    async with (
        http_session() as s,
        s.post(
            gw.uploads_url("C-1"), headers=tus_headers(gw.token("C-1"), Upload_Length=str(length))
        ) as resp,
    ):
        return resp.headers["Location"]


async def offset_of(url: str, token: str) -> int:
    async with http_session() as s, s.head(url, headers=tus_headers(token)) as resp:
        return int(resp.headers["Upload-Offset"])


async def test_interrupted_patch_keeps_what_arrived(gw: RunningGateway) -> None:
    """A PATCH whose connection drops midway keeps every byte that arrived (tus: 'SHOULD store')."""
    token = gw.token("C-1")
    url = await new_upload(gw, 1_000_000)
    sent = os.urandom(300_000)
    tls = await raw_patch(url, token, 0, 1_000_000, first=sent)
    await asyncio.sleep(0.2)
    tls.close()
    offsets: list[int] = []

    async def settled() -> bool:
        offsets.append(await offset_of(url, token))
        return offsets[-1] == len(sent)

    for _ in range(100):
        if await settled():
            break
        await asyncio.sleep(0.05)
    assert offsets[-1] == len(sent)
    async with http_session() as s:
        rest = os.urandom(700_000)
        h = tus_headers(token, Upload_Offset=str(len(sent)), Content_Type=OCTETS)
        async with s.patch(url, data=rest, headers=h) as resp:
            assert resp.status == 204
        async with s.get(
            f"{gw.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            (record,) = await resp.json()
    assert record["sha256"] == hashlib.sha256(sent + rest).hexdigest()


async def test_interrupted_patch_with_checksum_keeps_nothing(gw: RunningGateway) -> None:
    """A checksummed PATCH that is cut off cannot be verified, so none of it is kept."""
    token = gw.token("C-1")
    url = await new_upload(gw, 1000)
    sock = await raw_patch(
        url, token, 0, 1000, extra="Upload-Checksum: sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n", first=b"x" * 400
    )
    await asyncio.sleep(0.3)
    sock.close()
    await asyncio.sleep(0.3)
    assert await offset_of(url, token) == 0


async def test_concurrent_patches_never_interleave(gw: RunningGateway) -> None:
    """A newer PATCH takes over a stalled one: the old one stops and commits; the new one gets the offset."""
    token = gw.token("C-1")
    url = await new_upload(gw, 200_000)
    first = b"A" * 50_000
    stalled = await raw_patch(url, token, 0, 200_000, first=first)
    await asyncio.sleep(0.2)
    started = asyncio.get_running_loop().time()
    async with http_session() as s:
        h = tus_headers(token, Upload_Offset="0", Content_Type=OCTETS)
        async with s.patch(url, data=b"B" * 200_000, headers=h) as resp:
            assert resp.status == 409  # the stalled request's bytes were committed first
        assert asyncio.get_running_loop().time() - started < 5
        offset = await offset_of(url, token)
        assert offset == len(first)
        # the stalled connection sending more changes nothing now
        with contextlib.suppress(OSError):
            await asyncio.to_thread(stalled.sendall, b"A" * 10_000)
        await asyncio.sleep(0.2)
        assert await offset_of(url, token) == offset
        h = tus_headers(token, Upload_Offset=str(offset), Content_Type=OCTETS)
        async with s.patch(url, data=b"C" * (200_000 - offset), headers=h) as resp:
            assert resp.status == 204
        async with s.get(
            f"{gw.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            (record,) = await resp.json()
    stalled.close()
    assert record["sha256"] == hashlib.sha256(first + b"C" * (200_000 - offset)).hexdigest()


async def test_acknowledged_bytes_survive_kill_9(tmp_path: Path) -> None:
    """Chunks acknowledged before ``kill -9`` are all there after a restart; the upload then completes."""
    data = os.urandom(6 * 1024 * 1024)
    with gateway_process(tmp_path / "node") as node:
        node.open_case("C-1")
        token = node.token("C-1")
        async with http_session() as s:
            async with s.post(
                f"{node.url}/api/v1/cases/C-1/uploads",
                headers=tus_headers(token, Upload_Length=str(len(data))),
            ) as resp:
                url = resp.headers["Location"]
            acked = 0
            for _ in range(3):
                h = tus_headers(token, Upload_Offset=str(acked), Content_Type=OCTETS)
                async with s.patch(
                    url, data=io.BytesIO(data[acked : acked + 1024 * 1024]), headers=h
                ) as resp:
                    assert resp.status == 204
                    acked = int(resp.headers["Upload-Offset"])
        node.kill9()
        node.start()
        async with http_session() as s:
            assert await offset_of(url, token) == acked == 3 * 1024 * 1024
            h = tus_headers(token, Upload_Offset=str(acked), Content_Type=OCTETS)
            async with s.patch(url, data=io.BytesIO(data[acked:]), headers=h) as resp:
                assert resp.status == 204
            async with s.get(
                f"{node.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                (record,) = await resp.json()
            assert record["sha256"] == hashlib.sha256(data).hexdigest()


async def test_kill_9_during_a_patch_loses_only_unacknowledged_bytes(tmp_path: Path) -> None:
    """A gateway killed mid-PATCH keeps at least the acknowledged offset; resuming gives the whole file."""
    data = os.urandom(8 * 1024 * 1024)
    with gateway_process(tmp_path / "node") as node:
        node.open_case("C-1")
        token = node.token("C-1")
        async with http_session() as s:
            async with s.post(
                f"{node.url}/api/v1/cases/C-1/uploads",
                headers=tus_headers(token, Upload_Length=str(len(data))),
            ) as resp:
                url = resp.headers["Location"]
            h = tus_headers(token, Upload_Offset="0", Content_Type=OCTETS)
            async with s.patch(url, data=io.BytesIO(data[: 2 * 1024 * 1024]), headers=h) as resp:
                acked = int(resp.headers["Upload-Offset"])

            async def slow_body():
                for i in range(acked, len(data), 256 * 1024):
                    yield data[i : i + 256 * 1024]
                    await asyncio.sleep(0.05)

            h = tus_headers(token, Upload_Offset=str(acked), Content_Type=OCTETS)
            patching = asyncio.ensure_future(s.patch(url, data=slow_body(), headers=h))
            await asyncio.sleep(0.5)
            node.kill9()
            with contextlib.suppress(aiohttp.ClientError):
                await patching
        node.start()
        offset = await offset_of(url, token)
        assert acked <= offset < len(data)
        async with http_session() as s:
            h = tus_headers(token, Upload_Offset=str(offset), Content_Type=OCTETS)
            async with s.patch(url, data=io.BytesIO(data[offset:]), headers=h) as resp:
                assert resp.status == 204
            async with s.get(
                f"{node.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                (record,) = await resp.json()
        assert record["sha256"] == hashlib.sha256(data).hexdigest()


async def test_resume_on_a_living_gateway_does_not_reread_stored_data(gw: RunningGateway, caplog) -> None:
    """Digests are carried between requests: only a restarted gateway re-reads the stored prefix."""
    token = gw.token("C-1")
    url = await new_upload(gw, 30)
    async with http_session() as s:
        for i in range(3):
            h = tus_headers(token, Upload_Offset=str(i * 10), Content_Type=OCTETS)
            async with s.patch(url, data=b"0123456789", headers=h) as resp:
                assert resp.status == 204
    assert "rebuilding digests" not in caplog.text
