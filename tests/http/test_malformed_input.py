"""Malformed numbers in headers get a clear 4xx over the real socket, never a 500, and leave nothing
behind."""

from __future__ import annotations

import base64

import pytest

from eftgw.errors import BadRequest
from eftgw.model import Principal, Role
from tests.http.rawhttp import raw_request
from tests.support import RunningGateway, http_session, tus_headers

BAD_INTEGERS = [
    "9999999999999999999",  # 19 digits, above 2**63 - 1: the database cannot store it
    str(2**63),
    "4" * 4400,  # more digits than int() converts
    "²",  # str.isdigit() says yes, int() says no
    "٣",  # Arabic-Indic three: int() would read it as 3
    "\uff11\uff12",  # fullwidth digits
    "-1",
    "+1",
    "1e3",
    "0x10",
    "1 2",
    "",
]


async def test_bad_upload_length_is_400_and_stores_nothing(gw: RunningGateway) -> None:
    """Every malformed or out-of-range Upload-Length is a 400 naming the header; no upload, no staging."""
    token = gw.token("C-1")
    for value in BAD_INTEGERS:
        headers = [("Tus-Resumable", "1.0.0"), ("Authorization", f"Bearer {token}"), ("Upload-Length", value)]
        resp = await raw_request(gw.url, "POST", "/api/v1/cases/C-1/uploads", headers)
        assert resp.status == 400, (value[:20], resp.status, resp.body[:200])
        assert b"Upload-Length" in resp.body and b"Traceback" not in resp.body
        assert "location" not in resp.headers
    assert await gw.gateway.store.list_keys("uploads/") == []
    assert await gw.gateway.repo.list_uploads("C-1") == []


async def test_largest_storable_length_is_accepted(gw: RunningGateway) -> None:
    """2**63 - 1, the documented maximum, is a valid Upload-Length (the bound is exact, not approximate)."""
    async with (
        http_session() as s,
        s.post(
            gw.uploads_url("C-1"), headers=tus_headers(gw.token("C-1"), Upload_Length=str(2**63 - 1))
        ) as r,
    ):
        assert r.status == 201
    (upload,) = await gw.gateway.repo.list_uploads("C-1")
    assert upload.length == 2**63 - 1


async def test_bad_upload_offset_is_400_and_changes_nothing(gw: RunningGateway) -> None:
    """A PATCH whose Upload-Offset is not plain ASCII digits is refused before any byte is written."""
    token = gw.token("C-1")
    async with (
        http_session() as s,
        s.post(gw.uploads_url("C-1"), headers=tus_headers(token, Upload_Length="4")) as r,
    ):
        assert r.status == 201
        path = "/api/v1/cases/C-1/uploads/" + r.headers["Location"].rsplit("/", 1)[1]
    for value in BAD_INTEGERS:
        headers = [
            ("Tus-Resumable", "1.0.0"),
            ("Authorization", f"Bearer {token}"),
            ("Content-Type", "application/offset+octet-stream"),
            ("Upload-Offset", value),
        ]
        resp = await raw_request(gw.url, "PATCH", path, headers, b"data")
        assert resp.status == 400, (value[:20], resp.status, resp.body[:200])
        assert b"Upload-Offset" in resp.body
    (upload,) = await gw.gateway.repo.list_uploads("C-1")
    assert upload.offset == 0


async def test_non_ascii_upload_metadata_is_400(gw: RunningGateway) -> None:
    """Upload-Metadata whose value is not ASCII base64 (here '²') is a 400 naming the key, not a 500."""
    headers = [
        ("Tus-Resumable", "1.0.0"),
        ("Authorization", f"Bearer {gw.token('C-1')}"),
        ("Upload-Length", "3"),
        ("Upload-Metadata", "filename ²"),
    ]
    resp = await raw_request(gw.url, "POST", "/api/v1/cases/C-1/uploads", headers)
    assert resp.status == 400 and b"filename" in resp.body
    assert await gw.gateway.store.list_keys("uploads/") == []


async def test_staging_is_made_only_after_the_upload_row_is_accepted(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the database refuses the new upload, no staging data is left behind (none was made yet); a
    length the database cannot hold is refused by the core itself, whatever the transport."""
    customer = Principal("alice", Role.CUSTOMER, "C-1", via="token")
    with pytest.raises(BadRequest):
        await gw.gateway.uploads.create(customer, "C-1", length=2**64, metadata={})

    async def refuse(upload: object) -> None:
        raise OverflowError("the database refused the row")

    monkeypatch.setattr(gw.gateway.repo, "add_upload", refuse)
    with pytest.raises(OverflowError):
        await gw.gateway.uploads.create(customer, "C-1", length=10, metadata={})
    assert await gw.gateway.store.list_keys("uploads/") == []


async def _upload(gw: RunningGateway, data: bytes) -> str:
    token = gw.token("C-1")
    meta = "filename " + base64.b64encode(b"f.bin").decode()
    headers = tus_headers(
        token,
        Upload_Length=str(len(data)),
        Upload_Metadata=meta,
        Content_Type="application/offset+octet-stream",
    )
    async with http_session() as s, s.post(gw.uploads_url("C-1"), data=data, headers=headers) as resp:
        assert resp.status == 201
    (record,) = await gw.gateway.repo.list_files("C-1")
    return f"/api/v1/cases/C-1/files/{record.id}/content"


@pytest.mark.parametrize(
    ("range_header", "status", "content_range", "body"),
    [
        ("bytes=" + "7" * 4400 + "-", 416, "bytes */10", None),
        ("bytes=2-" + "7" * 4400, 206, "bytes 2-9/10", b"23456789"),
        ("bytes=-" + "7" * 4400, 206, "bytes 0-9/10", b"0123456789"),
        ("bytes=9223372036854775807-", 416, "bytes */10", None),
        ("bytes=²-", 200, None, b"0123456789"),  # not a range: ignored, the whole file
        ("bytes=٣-", 200, None, b"0123456789"),  # Arabic-Indic 3 is not "3"
        ("bytes=-٣", 200, None, b"0123456789"),
        ("bytes=5-2", 416, "bytes */10", None),
        ("bytes=0-1,4-5", 200, None, b"0123456789"),
        ("BYTES=7-", 206, "bytes 7-9/10", b"789"),
    ],
)
async def test_range_numbers_are_ascii_and_of_any_length(
    gw: RunningGateway, range_header: str, status: int, content_range: str | None, body: bytes | None
) -> None:
    """Range positions are ASCII digits of any length: huge ones mean 'past the end', not a 500."""
    target = await _upload(gw, b"0123456789")
    headers = [("Authorization", f"Bearer {gw.token('C-1')}"), ("Range", range_header)]
    resp = await raw_request(gw.url, "GET", target, headers)
    assert resp.status == status, resp.body[:200]
    assert resp.headers.get("content-range") == content_range
    if body is not None:
        assert resp.body == body


async def test_any_range_of_an_empty_file_is_416(gw: RunningGateway) -> None:
    """RFC 9110: a zero-length file has no satisfiable range: 416 with 'bytes */0', never 'bytes 0--1/0'."""
    target = await _upload(gw, b"")
    token = gw.token("C-1")
    for range_header in ("bytes=-5", "bytes=0-", "bytes=0-0", "bytes=-1"):
        for method in ("GET", "HEAD"):
            resp = await raw_request(
                gw.url, method, target, [("Authorization", f"Bearer {token}"), ("Range", range_header)]
            )
            assert resp.status == 416, (range_header, method)
            assert resp.headers["content-range"] == "bytes */0"
    resp = await raw_request(gw.url, "GET", target, [("Authorization", f"Bearer {token}")])
    assert resp.status == 200 and resp.headers["content-length"] == "0" and resp.body == b""


async def test_launch_form_without_multipart_boundary_is_400(gw: RunningGateway) -> None:
    """POST /launch declared as multipart/form-data but without its boundary (found by Schemathesis) is a
    400 asking for the form field, not a 500."""
    headers = [("Content-Type", "multipart/form-data")]
    resp = await raw_request(gw.url, "POST", "/launch", headers, b"token=abc")
    assert resp.status == 400 and b"token" in resp.body
