"""Integration events after real operations over HTTP (tus, the IETF draft, the files and integration APIs,
the retention sweep), each read back through the pull API ``GET /api/v1/integration/events`` over TCP, with
exactly its type's fields; and the pull API itself: paging, its cursor, who may read it, bad input."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from eftgw.clock import SystemClock
from eftgw.events import EVENT_TYPES
from eftgw.metadata import schema as t
from eftgw.model import SYSTEM
from eftgw.retention.worker import sweep
from tests.support import RunningGateway, http_session, running_gateway, tus_headers

OCTETS = "application/offset+octet-stream"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[RunningGateway, SystemClock]]:
    """A gateway (with case ``C-1`` open) whose clock a test can move forward."""
    clock = SystemClock()
    async with running_gateway(tmp_path / "gw", clock=clock) as running:
        await running.gateway.cases.open(SYSTEM, "C-1")
        yield running, clock


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def feed(
    gw: RunningGateway, query: dict[str, str] | None = None, token: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    """One GET of the pull API with the service token (or ``token``): status, JSON body, headers."""
    token = token or gw.token(None, role="service", user="portal")
    url = f"{gw.url}/api/v1/integration/events"
    async with http_session() as s, s.get(url, params=query or {}, headers=bearer(token)) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def all_events(gw: RunningGateway, kind: str | None = None) -> list[dict[str, Any]]:
    status, body, _ = await feed(gw, {"limit": "1000"})
    assert status == 200, body
    events: list[dict[str, Any]] = body["events"]
    for event in events:  # every event has exactly its type's fields
        assert set(event["data"]) == set(EVENT_TYPES[event["type"]]), event
        assert event["id"].startswith("evt_") and event["region"] == gw.gateway.settings.region
        assert event["timestamp"].endswith("Z")
    return [e for e in events if kind is None or e["type"] == kind]


def meta(name: str) -> str:
    return "filename " + base64.b64encode(name.encode()).decode()


async def tus_upload(gw: RunningGateway, data: bytes, name: str, token: str | None = None) -> str:
    """creation-with-upload: the whole file in the POST; the id of the file it became."""
    token = token or gw.token("C-1")
    h = tus_headers(token, Upload_Length=str(len(data)), Upload_Metadata=meta(name), Content_Type=OCTETS)
    async with http_session() as s:
        async with s.post(gw.uploads_url("C-1"), data=io.BytesIO(data), headers=h) as resp:
            assert resp.status == 201 and resp.headers["Upload-Offset"] == str(len(data))
        async with s.get(f"{gw.url}/api/v1/cases/C-1/files", headers=bearer(token)) as resp:
            files = await resp.json()
    return str(next(f["id"] for f in files if f["name"] == name))


async def test_file_finished_over_tus_patch_concatenation_and_the_ietf_draft(gw: RunningGateway) -> None:
    """A file finished by tus creation-with-upload, by PATCHes, by a concatenation's final upload and by a
    draft creation with all its content each gives one file.finished with its id, name, size, SHA-256, the
    uploader, role, transport and client address."""
    token = gw.token("C-1", user="alice")
    one = os.urandom(70_000)
    first = await tus_upload(gw, one, "one.bin", token)
    two = b"patched " * 1000
    parts = [b"first|", b"second|", b"third"]
    async with http_session() as s:
        h = tus_headers(token, Upload_Length=str(len(two)), Upload_Metadata=meta("two.log"))
        async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
            url = resp.headers["Location"]
        for offset in (0, 3000):
            chunk = two[offset : offset + 3000] if offset == 0 else two[offset:]
            h = tus_headers(token, Upload_Offset=str(offset), Content_Type=OCTETS)
            async with s.patch(url, data=chunk, headers=h) as resp:
                assert resp.status == 204
        urls = []
        for part in parts:
            h = tus_headers(token, Upload_Length=str(len(part)), Upload_Concat="partial")
            async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
                urls.append(resp.headers["Location"])
            h = tus_headers(token, Upload_Offset="0", Content_Type=OCTETS)
            async with s.patch(urls[-1], data=part, headers=h) as resp:
                assert resp.status == 204
        h = tus_headers(token, Upload_Concat="final;" + " ".join(urls), Upload_Metadata=meta("joined.bin"))
        async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
            assert resp.status == 201
        draft = {
            "Upload-Draft-Interop-Version": "8",
            "Upload-Complete": "?1",
            "Content-Disposition": 'attachment; filename="draft.txt"',
            "Content-Type": "text/plain",
            **bearer(token),
        }
        async with s.post(gw.uploads_url("C-1"), data=b"draft body\n", headers=draft) as resp:
            assert resp.status == 201, await resp.text()
    finished = await all_events(gw, "file.finished")
    assert [e["data"]["name"] for e in finished] == ["one.bin", "two.log", "joined.bin", "draft.txt"]
    contents = [one, two, b"".join(parts), b"draft body\n"]
    for event, content in zip(finished, contents, strict=True):
        data = event["data"]
        assert data["size"] == len(content) and data["sha256"] == hashlib.sha256(content).hexdigest()
        assert (data["uploader"], data["role"], data["via"], data["client"]) == (
            "alice",
            "customer",
            "http",
            "127.0.0.1",
        )
        assert event["case_id"] == "C-1"
    assert finished[0]["data"]["file_id"] == first
    files = {f.name: f.id for f in await gw.gateway.repo.list_files("C-1")}
    assert [e["data"]["file_id"] for e in finished] == [files[e["data"]["name"]] for e in finished]
    assert len({e["id"] for e in finished}) == 4


async def test_file_downloaded_and_deleted_name_who_and_why(gw: RunningGateway) -> None:
    """Serving a download reports file.downloaded (who, role, transport, client); a customer's delete reports
    file.deleted with the reason ``user``."""
    file_id = await tus_upload(gw, b"x" * 1234, "report.txt")
    engineer = gw.token(None, role="engineer", user="eve")
    url = f"{gw.url}/api/v1/cases/C-1/files/{file_id}"
    async with http_session() as s:
        async with s.get(url + "/content", headers=bearer(engineer)) as resp:
            assert resp.status == 200 and len(await resp.read()) == 1234
        async with s.delete(url, headers=bearer(gw.token("C-1", user="alice"))) as resp:
            assert resp.status == 204
        async with s.delete(url, headers=bearer(gw.token("C-1", user="alice"))) as resp:
            assert resp.status == 404
    (downloaded,) = await all_events(gw, "file.downloaded")
    assert downloaded["data"] == {
        "file_id": file_id,
        "name": "report.txt",
        "size": 1234,
        "by": "eve",
        "role": "engineer",
        "via": "http",
        "client": "127.0.0.1",
    }
    (deleted,) = await all_events(gw, "file.deleted")
    assert deleted["data"] == {
        "file_id": file_id,
        "name": "report.txt",
        "size": 1234,
        "by": "alice",
        "role": "customer",
        "reason": "user",
    }


async def test_case_closed_and_reopened_carry_counts_and_bytes_not_names(gw: RunningGateway) -> None:
    """Closing and reopening a case through the integration API report how many files it has and their
    bytes; no file name appears in them."""
    await tus_upload(gw, b"a" * 100, "secret-a.log")
    await tus_upload(gw, b"b" * 250, "secret-b.log")
    service = gw.token(None, role="service", user="portal")
    async with http_session() as s:
        for action in ("close", "close", "reopen"):  # closing a closed case changes nothing: no event
            async with s.post(
                f"{gw.url}/api/v1/integration/cases/C-1/{action}", headers=bearer(service)
            ) as r:
                assert r.status == 200
    lifecycle = [e for e in await all_events(gw) if e["type"].startswith("case.")]
    assert [(e["type"], e["case_id"], e["data"]) for e in lifecycle] == [
        ("case.closed", "C-1", {"files": 2, "bytes": 350}),
        ("case.reopened", "C-1", {"files": 2, "bytes": 350}),
    ]


async def test_sftp_accounts_created_revoked_and_expired_exactly_once(
    node: tuple[RunningGateway, SystemClock],
) -> None:
    """Accounts created and revoked through the integration API are reported; an account left to expire is
    reported by the sweep once, however often the sweep runs."""
    gw, clock = node
    service = gw.token(None, role="service", user="portal")
    accounts = f"{gw.url}/api/v1/integration/cases/C-1/sftp-accounts"
    async with http_session() as s:
        async with s.post(accounts, headers=bearer(service)) as resp:
            revoked = await resp.json()
        async with s.post(accounts, headers=bearer(service)) as resp:
            kept = await resp.json()
        async with s.delete(
            f"{gw.url}/api/v1/integration/sftp-accounts/{revoked['username']}", headers=bearer(service)
        ) as resp:
            assert resp.status == 200
    clock.offset = dt.timedelta(hours=121)
    first, second = await sweep(gw.gateway.retention), await sweep(gw.gateway.retention)
    assert (first.expired_accounts, second.expired_accounts) == (1, 0)
    created = await all_events(gw, "sftp_account.created")
    assert [e["data"] for e in created] == [
        {"username": a["username"], "expires_at": a["expires_at"], "by": "portal"} for a in (revoked, kept)
    ]
    assert [e["data"] for e in await all_events(gw, "sftp_account.revoked")] == [
        {"username": revoked["username"], "by": "portal"}
    ]
    assert [e["data"] for e in await all_events(gw, "sftp_account.expired")] == [
        {"username": kept["username"], "expired_at": kept["expires_at"]}
    ]


async def test_an_idle_upload_expiring_is_reported_with_its_progress(
    node: tuple[RunningGateway, SystemClock],
) -> None:
    """An unfinished upload idle past its expiry is reported by the sweep as upload.expired, with its name,
    the bytes it had and its declared length."""
    gw, clock = node
    token = gw.token("C-1")
    h = tus_headers(token, Upload_Length="1000", Upload_Metadata=meta("half.bin"), Content_Type=OCTETS)
    async with http_session() as s, s.post(gw.uploads_url("C-1"), data=b"x" * 400, headers=h) as resp:
        upload_id = resp.headers["Location"].rsplit("/", 1)[1]
    clock.offset = dt.timedelta(seconds=gw.gateway.settings.upload_expiry + 60)
    assert (await sweep(gw.gateway.retention)).expired_uploads == 1
    (expired,) = await all_events(gw, "upload.expired")
    assert expired["case_id"] == "C-1"
    assert expired["data"] == {"upload_id": upload_id, "name": "half.bin", "offset": 400, "length": 1000}


async def test_a_purge_reports_counts_and_leaves_no_name_behind(
    node: tuple[RunningGateway, SystemClock],
) -> None:
    """The purge stores one case.purged (files and bytes), no file.deleted per file; in the same transaction
    the case's delivered events are deleted and its pending ones lose their file names. Delivered events older
    than the retention period are pruned by the sweep; other cases' events are kept whole."""
    gw, clock = node
    await gw.gateway.cases.open(SYSTEM, "C-2")
    await tus_upload(gw, b"1" * 10, "delivered-name.log")
    await tus_upload(gw, b"2" * 20, "pending-name.log")
    other = gw.token("C-2")
    h = tus_headers(other, Upload_Length="3", Upload_Metadata=meta("other.log"), Content_Type=OCTETS)
    async with http_session() as s, s.post(gw.uploads_url("C-2"), data=b"abc", headers=h) as resp:
        assert resp.status == 201
    events = await all_events(gw, "file.finished")
    seq = {e["data"]["name"]: await _seq(gw, e["id"]) for e in events}
    await gw.gateway.repo.record_delivered(seq["delivered-name.log"], clock.now(), 204)
    await gw.gateway.repo.record_delivered(seq["other.log"], clock.now(), 204)
    await gw.gateway.cases.close(SYSTEM, "C-1")
    clock.offset = dt.timedelta(days=gw.gateway.settings.retention_days, hours=1)
    result = await sweep(gw.gateway.retention)
    assert [p.case_id for p in result.purged] == ["C-1"]
    assert result.pruned_events == 1  # other.log's delivery happened more than the retention period ago
    left = await all_events(gw)
    assert [(e["type"], e["case_id"]) for e in left] == [
        ("file.finished", "C-1"),
        ("case.closed", "C-1"),
        ("case.purged", "C-1"),
    ]
    assert left[0]["data"]["name"] is None and left[0]["data"]["size"] == 20
    assert left[-1]["data"] == {"files": 2, "bytes": 30}
    async with gw.gateway.repo.engine.connect() as conn:
        stored = " ".join(str(row) for row in await conn.execute(sa.select(t.events)))
    assert "delivered-name.log" not in stored and "pending-name.log" not in stored


async def _seq(gw: RunningGateway, event_id: str) -> int:
    async with gw.gateway.repo.engine.connect() as conn:
        return int(
            (await conn.execute(sa.select(t.events.c.seq).where(t.events.c.id == event_id))).scalar_one()
        )


async def test_a_failed_upload_reports_nothing(gw: RunningGateway) -> None:
    """A completing PATCH whose checksum does not match keeps nothing and reports nothing; cancelling an
    upload reports nothing either. Only the retry that completes is reported, once."""
    token = gw.token("C-1")
    data = b"z" * 500
    async with http_session() as s:
        h = tus_headers(token, Upload_Length="500", Upload_Metadata=meta("checked.bin"))
        async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
            url = resp.headers["Location"]
        wrong = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
        h = tus_headers(token, Upload_Offset="0", Content_Type=OCTETS, Upload_Checksum=f"sha1 {wrong}")
        async with s.patch(url, data=data, headers=h) as resp:
            assert resp.status == 460
        assert await all_events(gw) == []
        right = base64.b64encode(hashlib.sha1(data).digest()).decode()
        h = tus_headers(token, Upload_Offset="0", Content_Type=OCTETS, Upload_Checksum=f"sha1 {right}")
        async with s.patch(url, data=data, headers=h) as resp:
            assert resp.status == 204
        h = tus_headers(token, Upload_Length="9", Upload_Metadata=meta("cancelled.bin"))
        async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
            cancelled = resp.headers["Location"]
        async with s.delete(cancelled, headers=tus_headers(token)) as resp:
            assert resp.status == 204
    assert [(e["type"], e["data"]["name"]) for e in await all_events(gw)] == [
        ("file.finished", "checked.bin")
    ]


async def test_the_feed_pages_by_cursor_and_link_in_commit_order(gw: RunningGateway) -> None:
    """Pages of ``limit`` events follow each other through ``next`` (and the same URL in ``Link``) without
    repeating or skipping one; at the end ``next`` stays put until a new event arrives, which the same
    cursor then returns."""
    for i in range(5):
        await gw.gateway.cases.close(SYSTEM, "C-1")
        await gw.gateway.cases.reopen(SYSTEM, "C-1")
        del i
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = {"limit": "3"} if cursor is None else {"limit": "3", "after": cursor}
        status, body, headers = await feed(gw, query)
        assert status == 200
        base = gw.gateway.settings.resolved_public_url + "/api/v1/integration/events"
        assert headers["Link"] == f'<{base}?after={body["next"]}&limit=3>; rel="next"'
        seen.extend(e["id"] for e in body["events"])
        pages += 1
        if not body["events"]:
            break
        cursor = body["next"]
    assert pages == 5 and len(seen) == len(set(seen)) == 10
    assert body["next"] == cursor
    await gw.gateway.cases.close(SYSTEM, "C-1")
    status, body, _ = await feed(gw, {"after": cursor})
    assert [e["type"] for e in body["events"]] == ["case.closed"] and body["events"][0]["id"] not in seen


def cursor_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_the_feed_is_for_the_service_alone_and_refuses_bad_input(gw: RunningGateway) -> None:
    """A customer or engineer token gets 403, no token 401; a cursor this gateway did not make and a limit
    out of range get a 400 with a sentence saying what is wrong."""
    assert (await feed(gw, token=gw.token("C-1")))[0] == 403
    assert (await feed(gw, token=gw.token(None, role="engineer", user="eve")))[0] == 403
    async with http_session() as s, s.get(f"{gw.url}/api/v1/integration/events") as resp:
        assert resp.status == 401
    odd = [b"e1:-1", b"x:1", "e1:²".encode(), b"e1:99999999999999999999", b"e1:9223372036854775808"]
    for query in [{"after": "garbage!"}, {"after": "ü"}] + [{"after": cursor_of(raw)} for raw in odd]:
        status, body, _ = await feed(gw, query)
        assert status == 400 and "cursor" in body["message"], (query, body)
    for limit in ("0", "1001", "-1", "ten", "1.5", "²", "١٢"):
        status, body, _ = await feed(gw, {"limit": limit})
        assert status == 400 and "limit" in body["message"], (limit, body)
    status, body, _ = await feed(gw, {"limit": "1000"})
    assert status == 200 and body["events"] == []
    status, body, _ = await feed(gw, {"after": cursor_of(b"e1:9223372036854775807")})  # the largest seq
    assert status == 200 and body == {"events": [], "next": cursor_of(b"e1:9223372036854775807")}
