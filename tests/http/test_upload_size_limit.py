"""``EFTGW_MAX_UPLOAD_SIZE`` over tus: no request shape (deferred length, creation-with-upload, a chunked
body, concatenation) stores a byte past the limit; each is refused with 413 and a sentence naming it."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

from eftgw.model import SYSTEM
from tests.support import RunningGateway, http_session, running_gateway, tus_headers

OCTETS = "application/offset+octet-stream"
LIMIT = 1024 * 1024
SENTENCE = f"exceeds the gateway's size limit of {LIMIT} bytes"


async def _chunked(data: bytes, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


async def _deferred(s, gw: RunningGateway, token: str) -> str:
    async with s.post(gw.uploads_url("C-1"), headers=tus_headers(token, Upload_Defer_Length="1")) as resp:
        assert resp.status == 201, await resp.text()
        return str(resp.headers["Location"])


async def _offset(s, url: str, token: str) -> int:
    async with s.head(url, headers=tus_headers(token)) as resp:
        assert resp.status == 200
        return int(resp.headers["Upload-Offset"])


async def _staged(gw: RunningGateway, url: str) -> int:
    upload = await gw.gateway.repo.get_upload(url.rsplit("/", 1)[-1])
    assert upload is not None
    return await gw.gateway.store.staging_size(upload.staging_key)


async def test_deferred_length_patch_past_the_limit_is_413_and_stores_nothing(tmp_path: Path) -> None:
    """A 5 MiB PATCH to an upload of deferred length under a 1 MiB limit is refused with 413 (with a
    Content-Length and chunked alike), nothing of it is stored, and the upload goes on up to the limit."""
    async with running_gateway(tmp_path / "gw", max_upload_size=LIMIT) as gw:
        await gw.gateway.cases.open(SYSTEM, "C-1")
        token = gw.token("C-1")
        big = b"x" * (5 * LIMIT)
        async with http_session() as s:
            url = await _deferred(s, gw, token)
            headers = tus_headers(token, Upload_Offset="0", Content_Type=OCTETS)
            async with s.patch(url, data=io.BytesIO(big), headers=headers) as resp:
                assert resp.status == 413
                assert SENTENCE in (await resp.json())["message"]
            async with s.patch(url, data=_chunked(big), headers=headers) as resp:
                assert resp.status == 413
                assert SENTENCE in (await resp.json())["message"]
            assert await _offset(s, url, token) == 0
            assert await _staged(gw, url) == 0
            async with s.patch(url, data=b"y" * LIMIT, headers=headers) as resp:
                assert resp.status == 204
                assert resp.headers["Upload-Offset"] == str(LIMIT)
            more = tus_headers(token, Upload_Offset=str(LIMIT), Content_Type=OCTETS)
            async with s.patch(url, data=_chunked(b"z"), headers=more) as resp:
                assert resp.status == 413
            assert await _offset(s, url, token) == LIMIT
            assert await _staged(gw, url) == LIMIT
            done = tus_headers(token, Upload_Offset=str(LIMIT), Content_Type=OCTETS, Upload_Length=str(LIMIT))
            async with s.patch(url, data=b"", headers=done) as resp:
                assert resp.status == 204
        files = await gw.gateway.repo.list_files("C-1")
        assert [f.size for f in files] == [LIMIT]


async def test_creation_with_upload_past_the_limit_is_413_and_leaves_no_upload(tmp_path: Path) -> None:
    """A POST with deferred length and a body larger than the limit is 413 and leaves no upload behind,
    whether the body's size is announced (Content-Length) or only found while reading it (chunked)."""
    async with running_gateway(tmp_path / "gw", max_upload_size=LIMIT) as gw:
        await gw.gateway.cases.open(SYSTEM, "C-1")
        token = gw.token("C-1")
        big = b"x" * (5 * LIMIT)
        headers = tus_headers(token, Upload_Defer_Length="1", Content_Type=OCTETS)
        async with http_session() as s:
            for body in (io.BytesIO(big), _chunked(big)):
                async with s.post(gw.uploads_url("C-1"), data=body, headers=headers) as resp:
                    assert resp.status == 413, await resp.text()
                    assert SENTENCE in (await resp.json())["message"]
            async with s.get(gw.uploads_url("C-1"), headers=tus_headers(token)) as resp:
                assert await resp.json() == []
        assert await gw.gateway.repo.list_files("C-1") == []


async def test_concatenation_past_the_limit_is_413(tmp_path: Path) -> None:
    """Partial uploads that each fit but together exceed the limit cannot be joined: the final is 413."""
    async with running_gateway(tmp_path / "gw", max_upload_size=LIMIT) as gw:
        await gw.gateway.cases.open(SYSTEM, "C-1")
        token = gw.token("C-1")
        part = b"p" * (LIMIT // 2 + 1)
        async with http_session() as s:
            urls = []
            for _ in range(2):
                h = tus_headers(token, Upload_Length=str(len(part)), Upload_Concat="partial")
                async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
                    assert resp.status == 201
                    urls.append(resp.headers["Location"])
                patch = tus_headers(token, Upload_Offset="0", Content_Type=OCTETS)
                async with s.patch(urls[-1], data=part, headers=patch) as resp:
                    assert resp.status == 204
            h = tus_headers(token, Upload_Concat="final;" + " ".join(urls))
            async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
                assert resp.status == 413
                assert SENTENCE in (await resp.json())["message"]
        assert await gw.gateway.repo.list_files("C-1") == []
