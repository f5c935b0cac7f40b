"""Every list endpoint comes in pages: ``limit`` and an opaque ``cursor`` in, ``Link: rel="next"`` out, in a
stable order in which items added or removed between pages neither repeat nor push others out."""

from __future__ import annotations

import base64
import re

import pytest

from eftgw.model import SYSTEM, Principal, Role
from eftgw.pagination import MAX_LIMIT
from tests.support import RunningGateway, http_session, tus_headers

ENGINEER = Principal("eve", Role.ENGINEER)
NEXT = re.compile(r'^<([^>]+)>; rel="next"$')


async def _empty_file(gw: RunningGateway, name: str) -> str:
    """A zero-length upload becomes a file at once; return the file id."""
    meta = {"filename": name}
    upload = await gw.gateway.uploads.create(ENGINEER, "C-1", length=0, metadata=meta)
    return upload.file_id


async def _pages(s, url: str, token: str) -> list[list[dict[str, object]]]:
    pages = []
    for _ in range(100):
        async with s.get(url, headers=tus_headers(token)) as resp:
            assert resp.status == 200, await resp.text()
            pages.append(await resp.json())
            link = resp.headers.get("Link")
            if link is None:
                assert "Eftgw-Next-Cursor" not in resp.headers
                return pages
            match = NEXT.match(link)
            assert match, link
            url = match.group(1)
            assert f"cursor={resp.headers['Eftgw-Next-Cursor']}" in url
    raise AssertionError("the pages never ended")


async def test_files_come_in_pages_that_follow_link_next(gw: RunningGateway) -> None:
    """Seven files with ``limit=3`` come as pages of 3, 3 and 1, oldest first, each file once."""
    ids = [await _empty_file(gw, f"f{i}.log") for i in range(7)]
    token = gw.token("C-1")
    async with http_session() as s:
        pages = await _pages(s, f"{gw.url}/api/v1/cases/C-1/files?limit=3", token)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [f["id"] for p in pages for f in p] == ids


async def test_pages_are_stable_while_the_list_changes(gw: RunningGateway) -> None:
    """A file removed from an earlier page and one added after the cursor do not make the walk skip or
    repeat any file: every file that existed throughout is seen exactly once."""
    ids = [await _empty_file(gw, f"f{i}.log") for i in range(6)]
    token = gw.token("C-1")
    async with http_session() as s:
        async with s.get(f"{gw.url}/api/v1/cases/C-1/files?limit=2", headers=tus_headers(token)) as resp:
            first = [f["id"] for f in await resp.json()]
            url = NEXT.match(resp.headers["Link"]).group(1)  # type: ignore[union-attr]
        await gw.gateway.files.delete(ENGINEER, "C-1", ids[0])
        added = await _empty_file(gw, "late.log")
        rest = [f["id"] for page in await _pages(s, url, token) for f in page]
    assert first == ids[:2]
    assert rest == [*ids[2:], added]


async def test_unfinished_uploads_come_in_pages(gw: RunningGateway) -> None:
    """Five unfinished uploads with ``limit=2`` come as pages of 2, 2 and 1, oldest first, each once."""
    token = gw.token("C-1")
    async with http_session() as s:
        urls = []
        for _ in range(5):
            h = tus_headers(token, Upload_Defer_Length="1")
            async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
                urls.append(resp.headers["Location"])
        pages = await _pages(s, gw.uploads_url("C-1") + "?limit=2", token)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [u["url"] for p in pages for u in p] == urls


@pytest.mark.parametrize(
    "query",
    ["limit=0", f"limit={MAX_LIMIT + 1}", "limit=ten", "cursor=not-a-cursor", "cursor=" + "x" * 12],
)
async def test_bad_page_parameters_are_400(gw: RunningGateway, query: str) -> None:
    """A limit outside 1..MAX_LIMIT or a cursor the gateway did not make is a 400 with a sentence."""
    token = gw.token("C-1")
    forged = base64.urlsafe_b64encode(b"2020-01-01T00:00:00|x").decode()  # no time zone: not ours
    async with http_session() as s:
        for url in (f"{gw.url}/api/v1/cases/C-1/files?{query}", f"{gw.uploads_url('C-1')}?{query}"):
            async with s.get(url, headers=tus_headers(token)) as resp:
                assert resp.status == 400
                assert (await resp.json())["code"] == "bad_request"
        async with s.get(
            f"{gw.url}/api/v1/cases/C-1/files?cursor={forged}", headers=tus_headers(token)
        ) as resp:
            assert resp.status == 400


async def test_a_cursor_does_not_open_another_case(gw: RunningGateway) -> None:
    """A cursor carries a position only: used on another case's URL it still answers 404 to a customer."""
    await gw.gateway.cases.open(SYSTEM, "C-2")
    for i in range(3):
        await _empty_file(gw, f"f{i}.log")
    async with http_session() as s:
        url = f"{gw.url}/api/v1/cases/C-1/files?limit=1"
        async with s.get(url, headers=tus_headers(gw.token("C-1"))) as resp:
            cursor = resp.headers["Eftgw-Next-Cursor"]
        other = f"{gw.url}/api/v1/cases/C-1/files?limit=1&cursor={cursor}"
        async with s.get(other, headers=tus_headers(gw.token("C-2", user="mallory"))) as resp:
            assert resp.status == 404


async def test_the_portals_account_list_comes_in_pages(gw: RunningGateway) -> None:
    """The integration API's list of a case's SFTP accounts pages like the others (service token)."""
    service = gw.token(None, role="service", user="portal")
    accounts = f"{gw.url}/api/v1/integration/cases/C-1/sftp-accounts"
    async with http_session() as s:
        names = []
        for _ in range(3):
            async with s.post(accounts, headers=tus_headers(service)) as resp:
                assert resp.status == 201
                names.append((await resp.json())["username"])
        pages = await _pages(s, accounts + "?limit=2", service)
    assert [len(p) for p in pages] == [2, 1]
    assert sorted(a["username"] for p in pages for a in p) == sorted(names)
