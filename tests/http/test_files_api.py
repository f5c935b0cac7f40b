"""The files API: listing, metadata, downloads with single ranges (resumable), deletion, audit trail."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from urllib.parse import unquote

from eftgw.model import SYSTEM
from tests.support import RunningGateway, http_session, tus_headers

DATA = os.urandom(3 * 1024 * 1024 + 17)


async def upload(
    gw: RunningGateway, data: bytes, name: str, token: str | None = None, case_id: str = "C-1"
) -> str:
    token = token or gw.token(case_id)
    meta = "filename " + base64.b64encode(name.encode()).decode()
    h = tus_headers(
        token,
        Upload_Length=str(len(data)),
        Upload_Metadata=meta,
        Content_Type="application/offset+octet-stream",
    )
    async with http_session() as s:
        async with s.post(gw.uploads_url(case_id), data=io.BytesIO(data), headers=h) as resp:
            assert resp.status == 201 and resp.headers["Upload-Offset"] == str(len(data))
        async with s.get(
            f"{gw.url}/api/v1/cases/{case_id}/files", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            files = await r.json()
    return next(f["id"] for f in files if f["name"] == name)


def auth(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def test_list_shows_the_contract_fields(gw: RunningGateway) -> None:
    """The list has id, name, size, sha256, uploaded_at, uploaded_by and source for every file."""
    await upload(gw, DATA, "big.log")
    engineer = gw.token(None, role="engineer", user="eve")
    async with http_session() as s, s.get(f"{gw.url}/api/v1/cases/C-1/files", headers=auth(engineer)) as resp:
        (record,) = await resp.json()
        assert resp.headers["Eftgw-Case-State"] == "open"
    assert {"id", "name", "size", "sha256", "uploaded_at", "uploaded_by", "source"} <= set(record)
    assert record["size"] == len(DATA) and record["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert record["uploaded_at"].endswith("Z")


async def test_download_whole_file_with_digest_and_safe_headers(gw: RunningGateway) -> None:
    """A download returns the exact bytes, Repr-Digest (RFC 9530), attachment disposition and no-store."""
    file_id = await upload(gw, DATA, 'we"ird ü name;.txt')
    engineer = gw.token(None, role="engineer", user="eve")
    async with http_session() as s:
        url = f"{gw.url}/api/v1/cases/C-1/files/{file_id}/content"
        async with s.get(url, headers=auth(engineer)) as resp:
            assert resp.status == 200
            body = await resp.read()
            headers = resp.headers
    assert body == DATA
    assert (
        headers["Repr-Digest"] == "sha-256=:" + base64.b64encode(hashlib.sha256(DATA).digest()).decode() + ":"
    )
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Accept-Ranges"] == "bytes"
    disposition = headers["Content-Disposition"]
    assert disposition.startswith("attachment; filename=")
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == 'we"ird ü name;.txt'


async def test_ranges_resume_a_download(gw: RunningGateway) -> None:
    """Single ranges answer 206 with Content-Range; a resumed download joined from ranges is the file."""
    file_id = await upload(gw, DATA, "r.bin")
    token = gw.token("C-1")
    url = f"{gw.url}/api/v1/cases/C-1/files/{file_id}/content"
    async with http_session() as s:
        async with s.get(url, headers=auth(token, Range="bytes=0-999")) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 0-999/{len(DATA)}"
            first = await resp.read()
            etag = resp.headers["ETag"]
        async with s.get(url, headers=auth(token, Range="bytes=1000-", **{"If-Range": etag})) as resp:
            assert resp.status == 206
            rest = await resp.read()
        assert first + rest == DATA
        async with s.get(url, headers=auth(token, Range="bytes=-10")) as resp:
            assert resp.status == 206 and await resp.read() == DATA[-10:]
        async with s.get(url, headers=auth(token, Range="bytes=5-", **{"If-Range": '"stale"'})) as resp:
            assert resp.status == 200 and len(await resp.read()) == len(DATA)
        async with s.get(url, headers=auth(token, Range=f"bytes={len(DATA)}-")) as resp:
            assert resp.status == 416
            assert resp.headers["Content-Range"] == f"bytes */{len(DATA)}"
        async with s.head(url, headers=auth(token, Range="bytes=10-19")) as resp:
            assert resp.status == 206 and resp.headers["Content-Length"] == "10"


async def test_customer_deletes_own_files_but_not_the_engineers(gw: RunningGateway) -> None:
    """A customer may delete what they uploaded; files from an engineer only an engineer deletes."""
    engineer = gw.token(None, role="engineer", user="eve")
    mine = await upload(gw, b"mine", "mine.txt")
    theirs = await upload(gw, b"for you", "fix.txt", token=engineer)
    customer = gw.token("C-1")
    async with http_session() as s:
        async with s.delete(f"{gw.url}/api/v1/cases/C-1/files/{theirs}", headers=auth(customer)) as resp:
            assert resp.status == 403
        async with s.delete(f"{gw.url}/api/v1/cases/C-1/files/{mine}", headers=auth(customer)) as resp:
            assert resp.status == 204
        async with s.get(f"{gw.url}/api/v1/cases/C-1/files/{mine}", headers=auth(customer)) as resp:
            assert resp.status == 404
        async with s.get(f"{gw.url}/api/v1/cases/C-1/files/{theirs}/content", headers=auth(customer)) as resp:
            assert await resp.read() == b"for you"
        async with s.delete(f"{gw.url}/api/v1/cases/C-1/files/{theirs}", headers=auth(engineer)) as resp:
            assert resp.status == 204
    assert await gw.gateway.store.list_keys("cases/C-1/") == []


async def test_closed_case_shows_purge_date(gw: RunningGateway) -> None:
    """After closure the case and its file list say when the files will be purged."""
    await upload(gw, b"x", "x.txt")
    case = await gw.gateway.cases.close(SYSTEM, "C-1")
    token = gw.token("C-1")
    async with http_session() as s:
        async with s.get(f"{gw.url}/api/v1/cases/C-1", headers=auth(token)) as resp:
            body = await resp.json()
        async with s.get(f"{gw.url}/api/v1/cases/C-1/files", headers=auth(token)) as resp:
            (record,) = await resp.json()
            assert resp.headers["Eftgw-Purge-Due-At"] == body["purge_due_at"]
    assert body["state"] == "closed"
    assert record["purge_due_at"] == body["purge_due_at"]
    assert body["purge_due_at"].startswith(
        (case.closed_at + __import__("datetime").timedelta(days=30)).date().isoformat()
    )


async def test_every_transfer_is_audited_with_who_what_when_where(gw: RunningGateway) -> None:
    """Upload, download and deletion each leave an audit event with actor, role, case and remote address."""
    file_id = await upload(gw, b"audit me", "a.txt")
    token = gw.token("C-1")
    async with http_session() as s:
        async with s.get(f"{gw.url}/api/v1/cases/C-1/files/{file_id}/content", headers=auth(token)) as resp:
            await resp.read()
        async with s.delete(f"{gw.url}/api/v1/cases/C-1/files/{file_id}", headers=auth(token)) as resp:
            assert resp.status == 204
    events = await gw.gateway.repo.list_audit("C-1")
    actions = [e.action for e in events]
    for action in ("upload.created", "upload.completed", "file.downloaded", "file.deleted"):
        assert action in actions
    downloaded = next(e for e in events if e.action == "file.downloaded")
    assert downloaded.actor == "alice" and downloaded.role == "customer" and downloaded.remote == "127.0.0.1"
    assert downloaded.target == file_id and downloaded.at is not None


async def test_errors_never_leak_internals(gw: RunningGateway) -> None:
    """Unknown files and malformed ids get JSON errors with a code and a sentence, never a trace."""
    token = gw.token("C-1")
    async with http_session() as s:
        async with s.get(f"{gw.url}/api/v1/cases/C-1/files/f_nope/content", headers=auth(token)) as resp:
            assert resp.status == 404
            body = await resp.json()
            assert body == {"code": "file_not_found", "message": "No such file."}
        async with s.get(f"{gw.url}/api/v1/cases/..%2Fetc/files", headers=auth(token)) as resp:
            assert resp.status in (400, 404)
            assert "Traceback" not in await resp.text()
