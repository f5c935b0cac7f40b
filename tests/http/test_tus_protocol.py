"""tus 1.0.0 as the spec states it: core requests, every extension eftgw announces, and every status code."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
import xxhash

from eftgw.hashing import CHECKSUM_ALGORITHMS
from tests.support import RunningGateway, http_session, tus_headers

OCTETS = "application/offset+octet-stream"


async def create(
    session, gw: RunningGateway, length: int | None = 10, token: str | None = None, **headers: str
) -> str:
    token = token or gw.token("C-1")
    extra = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    extra.update(headers)
    async with session.post(gw.uploads_url("C-1"), headers=tus_headers(token, **extra)) as resp:
        assert resp.status == 201, await resp.text()
        return resp.headers["Location"]


async def patch(session, url: str, offset: int, data: bytes, token: str, **headers: str):
    h = tus_headers(token, Upload_Offset=str(offset), Content_Type=OCTETS, **headers)
    return await session.patch(url, data=data, headers=h)


async def head_offset(session, url: str, token: str) -> int:
    async with session.head(url, headers=tus_headers(token)) as resp:
        assert resp.status == 200
        return int(resp.headers["Upload-Offset"])


async def test_options_announces_version_extensions_and_checksums(gw: RunningGateway) -> None:
    """OPTIONS needs no token and lists the version, every extension and the checksum algorithms."""
    async with http_session() as s, s.options(gw.uploads_url("C-1")) as resp:
        assert resp.status == 204
        assert resp.headers["Tus-Version"] == "1.0.0"
        extensions = set(resp.headers["Tus-Extension"].split(","))
        assert extensions == {
            "creation",
            "creation-with-upload",
            "creation-defer-length",
            "expiration",
            "checksum",
            "termination",
            "concatenation",
        }
        algorithms = set(resp.headers["Tus-Checksum-Algorithm"].split(","))
        assert {"sha1", "sha256", "md5", "crc32", "xxh3", "xxh128"} <= algorithms
        assert "Tus-Max-Size" not in resp.headers


async def test_creation_head_and_patch_to_completion(gw: RunningGateway) -> None:
    """A new upload reports offset 0, accepts chunks in order and becomes a listed file with its SHA-256."""
    token = gw.token("C-1")
    meta = (
        "filename "
        + base64.b64encode("report é.log".encode()).decode()
        + ",filetype "
        + base64.b64encode(b"text/plain").decode()
    )
    async with http_session() as s:
        url = await create(s, gw, 10, Upload_Metadata=meta)
        assert url.startswith(gw.url + "/api/v1/cases/C-1/uploads/")
        async with s.head(url, headers=tus_headers(token)) as resp:
            assert resp.headers["Upload-Offset"] == "0"
            assert resp.headers["Upload-Length"] == "10"
            assert resp.headers["Cache-Control"] == "no-store"
            assert (
                "report"
                in base64.b64decode(resp.headers["Upload-Metadata"].split(",")[0].split(" ")[1]).decode()
            )
            assert "Upload-Expires" in resp.headers
        async with await patch(s, url, 0, b"01234", token) as resp:
            assert resp.status == 204
            assert resp.headers["Upload-Offset"] == "5"
            assert resp.headers["Tus-Resumable"] == "1.0.0"
        async with await patch(s, url, 5, b"56789", token) as resp:
            assert resp.status == 204 and resp.headers["Upload-Offset"] == "10"
        async with s.get(
            f"{gw.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            files = await resp.json()
    assert [(f["name"], f["size"], f["sha256"]) for f in files] == [
        ("report é.log", 10, hashlib.sha256(b"0123456789").hexdigest())
    ]
    assert files[0]["uploaded_by"] == "alice" and files[0]["source"] == "customer"


async def test_missing_or_wrong_tus_version_is_412(gw: RunningGateway) -> None:
    """Requests other than OPTIONS without 'Tus-Resumable: 1.0.0' get 412 and the supported version."""
    token = gw.token("C-1")
    async with http_session() as s:
        h = {"Authorization": f"Bearer {token}", "Upload-Length": "3"}
        async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
            assert resp.status == 412
        async with s.post(gw.uploads_url("C-1"), headers={**h, "Tus-Resumable": "0.2.2"}) as resp:
            assert resp.status == 412


async def test_patch_with_wrong_content_type_is_415(gw: RunningGateway) -> None:
    """PATCH bodies must be application/offset+octet-stream."""
    token = gw.token("C-1")
    async with http_session() as s:
        url = await create(s, gw, 3)
        h = tus_headers(token, Upload_Offset="0", Content_Type="application/json")
        async with s.patch(url, data=b"abc", headers=h) as resp:
            assert resp.status == 415
        assert await head_offset(s, url, token) == 0


async def test_offset_mismatch_is_409_and_changes_nothing(gw: RunningGateway) -> None:
    """A PATCH at any offset but the server's is refused with 409, and the data is not written."""
    token = gw.token("C-1")
    async with http_session() as s:
        url = await create(s, gw, 6)
        async with await patch(s, url, 0, b"abc", token) as resp:
            assert resp.status == 204
        for wrong in (0, 2, 4):
            async with await patch(s, url, wrong, b"xyz", token) as resp:
                assert resp.status == 409
                assert (await resp.json())["code"] == "offset_mismatch"
        assert await head_offset(s, url, token) == 3


async def test_upload_over_max_size_is_413(tmp_path) -> None:
    """With Tus-Max-Size configured, a larger Upload-Length (or a longer deferred length) is refused."""
    from eftgw.model import SYSTEM
    from tests.support import running_gateway

    async with running_gateway(tmp_path / "gw", max_upload_size=100) as gw:
        await gw.gateway.cases.open(SYSTEM, "C-1")
        token = gw.token("C-1")
        async with http_session() as s:
            async with s.options(gw.uploads_url("C-1")) as resp:
                assert resp.headers["Tus-Max-Size"] == "100"
            async with s.post(gw.uploads_url("C-1"), headers=tus_headers(token, Upload_Length="101")) as resp:
                assert resp.status == 413
            url = await create(s, gw, None)
            async with await patch(s, url, 0, b"x", token, Upload_Length="101") as resp:
                assert resp.status == 413


async def test_more_bytes_than_the_length_is_413_and_discarded(gw: RunningGateway) -> None:
    """A body that would run past Upload-Length is refused and nothing of it is kept."""
    token = gw.token("C-1")
    async with http_session() as s:
        url = await create(s, gw, 4)
        async with await patch(s, url, 0, b"abcdef", token) as resp:
            assert resp.status == 413
        assert await head_offset(s, url, token) == 0


def _digest(algorithm: str, data: bytes) -> str:
    hasher = CHECKSUM_ALGORITHMS[algorithm]()
    hasher.update(data)
    return base64.b64encode(hasher.digest()).decode()


@pytest.mark.parametrize("algorithm", sorted(CHECKSUM_ALGORITHMS))
async def test_each_checksum_algorithm_verifies_chunks(gw: RunningGateway, algorithm: str) -> None:
    """A chunk with a correct checksum is stored; a wrong one is 460, discarded, and the offset stays."""
    token = gw.token("C-1")
    async with http_session() as s:
        url = await create(s, gw, 8)
        async with await patch(
            s, url, 0, b"good", token, Upload_Checksum=f"{algorithm} {_digest(algorithm, b'good')}"
        ) as r:
            assert r.status == 204 and r.headers["Upload-Offset"] == "4"
        bad = f"{algorithm} {_digest(algorithm, b'ba d')}"
        async with await patch(s, url, 4, b"evil", token, Upload_Checksum=bad) as r:
            assert r.status == 460
            assert (await r.json())["code"] == "checksum_mismatch"
        assert await head_offset(s, url, token) == 4
        async with await patch(
            s, url, 4, b"more", token, Upload_Checksum=f"{algorithm} {_digest(algorithm, b'more')}"
        ) as r:
            assert r.status == 204
        async with s.get(
            f"{gw.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            (record,) = await resp.json()
    assert record["sha256"] == hashlib.sha256(b"goodmore").hexdigest()
    assert record["xxh128"] == xxhash.xxh3_128(b"goodmore").hexdigest()


def test_checksum_reference_values() -> None:
    """The checksum table computes the standard digests (crc32 big-endian, xxh3 = XXH3-64)."""
    assert _digest("crc32", b"abc") == base64.b64encode(zlib.crc32(b"abc").to_bytes(4, "big")).decode()
    assert _digest("xxh3", b"abc") == base64.b64encode(xxhash.xxh3_64(b"abc").digest()).decode()
    assert _digest("sha1", b"abc") == base64.b64encode(hashlib.sha1(b"abc").digest()).decode()


async def test_unknown_checksum_algorithm_is_400(gw: RunningGateway) -> None:
    """An algorithm outside Tus-Checksum-Algorithm is a clear 400, and nothing is written."""
    token = gw.token("C-1")
    async with http_session() as s:
        url = await create(s, gw, 3)
        async with await patch(s, url, 0, b"abc", token, Upload_Checksum="whirlpool AAAA") as r:
            assert r.status == 400
            assert "not supported" in (await r.json())["message"]
        assert await head_offset(s, url, token) == 0


async def test_creation_with_upload_stores_the_first_chunk(gw: RunningGateway) -> None:
    """A POST with a body creates the upload and stores the body, reporting the new offset."""
    token = gw.token("C-1")
    async with http_session() as s:
        h = tus_headers(token, Upload_Length="6", Content_Type=OCTETS)
        async with s.post(gw.uploads_url("C-1"), data=b"abc", headers=h) as resp:
            assert resp.status == 201
            assert resp.headers["Upload-Offset"] == "3"
            url = resp.headers["Location"]
        assert await head_offset(s, url, token) == 3


async def test_requests_with_empty_bodies_answer_one_after_another(gw: RunningGateway) -> None:
    """Creation-with-upload and PATCH requests whose body is empty (Content-Length: 0) each answer at once,
    also after others: aiohttp gives them one shared empty stream, which the body reader must not iterate
    (once read, its chunk iterator never ends and the request would hang)."""
    token = gw.token("C-1")
    async with http_session() as s:
        urls = []
        for _ in range(3):
            h = tus_headers(token, Upload_Length="3", Content_Type=OCTETS)
            async with s.post(gw.uploads_url("C-1"), data=b"", headers=h) as resp:
                assert resp.status == 201 and resp.headers["Upload-Offset"] == "0"
                urls.append(resp.headers["Location"])
        for url in urls:
            async with await patch(s, url, 0, b"", token) as resp:
                assert resp.status == 204 and resp.headers["Upload-Offset"] == "0"
            async with await patch(s, url, 0, b"abc", token) as resp:
                assert resp.status == 204 and resp.headers["Upload-Offset"] == "3"


async def test_deferred_length_is_declared_later(gw: RunningGateway) -> None:
    """With Upload-Defer-Length the length arrives with a later PATCH; HEAD says it is deferred until then."""
    token = gw.token("C-1")
    async with http_session() as s:
        url = await create(s, gw, None)
        async with s.head(url, headers=tus_headers(token)) as resp:
            assert resp.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in resp.headers
        async with await patch(s, url, 0, b"abc", token) as resp:
            assert resp.status == 204
        async with await patch(s, url, 3, b"def", token, Upload_Length="6") as resp:
            assert resp.status == 204
        async with s.head(url, headers=tus_headers(token)) as resp:
            assert resp.headers["Upload-Length"] == "6" and resp.headers["Upload-Offset"] == "6"


async def test_creation_needs_exactly_one_of_length_or_defer(gw: RunningGateway) -> None:
    """No length, or both a length and a deferral, is a 400."""
    token = gw.token("C-1")
    async with http_session() as s:
        async with s.post(gw.uploads_url("C-1"), headers=tus_headers(token)) as resp:
            assert resp.status == 400
        h = tus_headers(token, Upload_Length="3", Upload_Defer_Length="1")
        async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
            assert resp.status == 400
        h = tus_headers(token, Upload_Length="-3")
        async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
            assert resp.status == 400


async def test_terminated_upload_is_gone(gw: RunningGateway) -> None:
    """DELETE removes the upload's data; afterwards HEAD and PATCH answer 410."""
    token = gw.token("C-1")
    async with http_session() as s:
        url = await create(s, gw, 6)
        async with await patch(s, url, 0, b"abc", token) as resp:
            assert resp.status == 204
        async with s.delete(url, headers=tus_headers(token)) as resp:
            assert resp.status == 204
        async with s.head(url, headers=tus_headers(token)) as resp:
            assert resp.status == 410
        async with await patch(s, url, 3, b"def", token) as resp:
            assert resp.status == 410
    assert await gw.gateway.store.list_keys("uploads/C-1/") == []


async def test_unknown_upload_is_404(gw: RunningGateway) -> None:
    """An upload id that does not exist is a 404."""
    token = gw.token("C-1")
    async with (
        http_session() as s,
        s.head(gw.uploads_url("C-1") + "/nosuchupload", headers=tus_headers(token)) as r,
    ):
        assert r.status == 404


async def test_parallel_partials_concatenate_into_one_file(gw: RunningGateway) -> None:
    """Partial uploads sent in parallel join, in the order named, into one file with the right SHA-256."""
    token = gw.token("C-1")
    parts = [b"first-part|", b"second|", b"third"]
    async with http_session() as s:
        urls = []
        for part in parts:
            url = await create(s, gw, len(part), Upload_Concat="partial")
            async with s.head(url, headers=tus_headers(token)) as resp:
                assert resp.headers["Upload-Concat"] == "partial"
            urls.append(url)
        # send the parts out of order
        for i in (2, 0, 1):
            async with await patch(s, urls[i], 0, parts[i], token) as resp:
                assert resp.status == 204
        meta = "filename " + base64.b64encode(b"joined.bin").decode()
        h = tus_headers(token, Upload_Concat="final;" + " ".join(urls), Upload_Metadata=meta)
        async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
            assert resp.status == 201, await resp.text()
            final = resp.headers["Location"]
        async with s.head(final, headers=tus_headers(token)) as resp:
            assert resp.headers["Upload-Offset"] == resp.headers["Upload-Length"] == str(sum(map(len, parts)))
            assert resp.headers["Upload-Concat"].startswith("final;")
        async with s.get(
            f"{gw.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            files = await resp.json()
        assert [f["name"] for f in files] == ["joined.bin"]
        assert files[0]["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
        async with await patch(s, final, 0, b"x", token) as resp:
            assert resp.status == 403


async def test_final_upload_with_unfinished_partial_is_refused(gw: RunningGateway) -> None:
    """Concatenating a partial upload that is not complete is a clear 400."""
    token = gw.token("C-1")
    async with http_session() as s:
        url = await create(s, gw, 5, Upload_Concat="partial")
        h = tus_headers(token, Upload_Concat=f"final;{url}")
        async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == "upload_incomplete"


async def test_zero_length_upload_is_a_file_at_once(gw: RunningGateway) -> None:
    """Upload-Length: 0 makes an empty file at creation, with the SHA-256 of nothing."""
    token = gw.token("C-1")
    async with http_session() as s:
        await create(s, gw, 0, Upload_Metadata="filename " + base64.b64encode(b"empty").decode())
        async with s.get(
            f"{gw.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            (record,) = await resp.json()
    assert record["size"] == 0 and record["sha256"] == hashlib.sha256(b"").hexdigest()


async def test_malformed_metadata_is_400(gw: RunningGateway) -> None:
    """Upload-Metadata that is not 'key base64' pairs is refused clearly."""
    token = gw.token("C-1")
    async with http_session() as s:
        h = tus_headers(token, Upload_Length="3", Upload_Metadata="filename not*base64")
        async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
            assert resp.status == 400
            assert "Upload-Metadata" in (await resp.json())["message"]
