"""What each person sees: hostile names as plain text, the engineer's view and downloads, a closed case,
errors as sentences, pause and cancel, and the SFTP account panel."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from playwright.async_api import Browser, Route, expect

from eftgw.ids import secret_hash
from eftgw.model import SYSTEM
from tests.support import RunningGateway, running_gateway
from tests.web.client import ClientPage, MiB, gateway_json, random_file, sha256_of, wait_for_server_offset

pytestmark = pytest.mark.once

HOSTILE_NAMES = [
    "<img src=x onerror=\"document.title='pwned'\">.log",
    "\"><svg onload=\"document.title='pwned'\"><script>document.title='pwned'.txt",
    "a&amp;b <b>bold<b> {{7*7}} ${alert(1)}.csv",
    "report\u202egol.exe",
]
# No "/" or "\\" in these: the gateway keeps only a name's last path component (tests/http covers that).
HOSTILE_USER = "<img src=x onerror=alert(1)>mallory"


async def test_hostile_file_and_user_names_render_as_text(client: ClientPage, gw: RunningGateway) -> None:
    """Markup in file names and user names is shown literally and never parsed or run."""
    await client.launch(gw.launch_token("C-1", "customer", HOSTILE_USER))
    await client.choose(
        *[{"name": n, "mimeType": "text/html", "buffer": n.encode() * 100} for n in HOSTILE_NAMES]
    )
    await client.wait_done(len(HOSTILE_NAMES))
    await expect(client.page.locator(".files-table tbody tr")).to_have_count(len(HOSTILE_NAMES))
    rows = await client.files()
    assert sorted(r["name"] for r in rows) == sorted(HOSTILE_NAMES)
    assert {r["uploader"] for r in rows} == {HOSTILE_USER}
    for name in HOSTILE_NAMES:
        await expect(client.transfer(name)).to_have_count(1)
    await expect(client.page.locator(".who .uploader")).to_have_text(HOSTILE_USER)
    injected = await client.page.evaluate(
        "() => document.querySelectorAll('#app img, #app svg, #app script, #app b').length"
    )
    assert injected == 0
    assert await client.page.title() == "Case C-1 · File transfer"
    assert client.dialogs == [] and client.page_errors == [] and client.csp_violations() == []


async def test_engineer_opens_a_case_downloads_and_leaves_a_file_for_the_customer(
    browser: Browser, gw: RunningGateway, tmp_path: Path
) -> None:
    """An engineer picks the case, downloads the customer's file exactly; the customer gets the reply."""
    logs = random_file(tmp_path / "server logs.tar.gz", 3 * MiB + 17)
    fix = random_file(tmp_path / "hotfix.patch", 200_000)
    async with ClientPage.open(browser, gw.url) as customer, ClientPage.open(browser, gw.url) as engineer:
        await customer.launch(gw.launch_token("C-1", "customer", "alice"))
        await customer.choose(logs)
        await customer.wait_done(1)
        await expect(customer.page.locator(".files-table a", has_text="Download")).to_have_count(0)

        await engineer.launch(gw.launch_token(None, "engineer", "erin"))
        await engineer.page.get_by_label("Case number").fill("C-1")
        await engineer.page.get_by_role("button", name="Open case").click()
        await expect(engineer.page.locator("#case-title")).to_have_text("Case C-1")
        assert engineer.page.url.endswith("/app?case=C-1")
        await expect(engineer.page.locator(".files-table tbody tr")).to_have_count(1)
        (row,) = await engineer.files()
        assert row == {"name": logs.name, "sha256": sha256_of(logs), "uploader": "alice"}
        async with engineer.page.expect_download() as download_info:
            await engineer.page.get_by_role("link", name=f"Download {logs.name}").click()
        download = await download_info.value
        assert download.suggested_filename == logs.name
        assert Path(await download.path()).read_bytes() == logs.read_bytes()  # noqa: ASYNC240 - small file

        await engineer.choose(fix)
        await engineer.wait_done(1)
        await customer.page.reload()
        await expect(customer.page.locator(".files-table tbody tr")).to_have_count(2)
        await expect(customer.page.get_by_role("link", name=f"Download {logs.name}")).to_have_count(0)
        async with customer.page.expect_download() as download_info:
            await customer.page.get_by_role("link", name="Download hotfix.patch").click()
        saved = Path(await (await download_info.value).path())
        assert saved.read_bytes() == fix.read_bytes()  # noqa: ASYNC240 - small file
        assert "support engineer" in (
            await customer.page.locator("tr", has_text="hotfix.patch").text_content() or ""
        )


async def test_closed_case_is_read_only_and_shows_its_purge_date(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """A closed case offers no upload, says so in words, and shows when its files will be deleted."""
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    await client.choose(random_file(tmp_path / "before.log", 1000))
    await client.wait_done(1)
    closed_at = dt.datetime(2026, 1, 10, 12, tzinfo=dt.UTC)
    await gw.gateway.cases.close(SYSTEM, "C-1", at=closed_at)
    case = await gateway_json(gw.url, gw.token("C-1"), "/api/v1/cases/C-1")
    assert case["state"] == "closed" and case["purge_due_at"]
    await client.page.reload()
    await expect(client.page.locator("[data-case-state]")).to_have_text("Closed")
    note = client.page.locator(".closed-note")
    await expect(note).to_contain_text("This case is closed, so its files are read-only")
    purge_text = await client.page.evaluate(
        "iso => new Intl.DateTimeFormat(undefined, {dateStyle: 'long'}).format(new Date(iso))",
        case["purge_due_at"],
    )
    await expect(note).to_contain_text(f"The files will be deleted on {purge_text}.")
    await expect(client.page.locator(".files-table .file-purge")).to_have_text([purge_text])
    await expect(client.page.locator("#dropzone")).to_be_hidden()
    await expect(client.page.get_by_role("button", name="Choose files")).to_be_hidden()


async def test_errors_are_sentences_not_codes(browser: Browser, gw: RunningGateway, tmp_path: Path) -> None:
    """A case closed mid-upload, an ended session and a file over the limit each read as a plain sentence."""
    async with ClientPage.open(browser, gw.url) as client:
        await client.launch(gw.launch_token("C-1", "customer", "alice"))
        await client.throttle(1_000_000)
        await client.choose(random_file(tmp_path / "closing.bin", 6 * MiB))
        await wait_for_server_offset(gw.url, gw.token("C-1"), "C-1", 1)
        await gw.gateway.cases.close(SYSTEM, "C-1")
        row = client.transfer("closing.bin")
        await expect(row).to_have_attribute("data-state", "failed", timeout=30_000)
        await expect(row.locator(".transfer-detail")).to_have_text(
            "This case is closed: files can no longer be uploaded to it."
        )
        await expect(row.get_by_role("button", name="Retry upload of closing.bin")).to_be_hidden()
        await expect(client.page.locator("[data-case-state]")).to_have_text("Closed")
    await gw.gateway.cases.reopen(SYSTEM, "C-1")

    async with ClientPage.open(browser, gw.url) as client:
        await client.launch(gw.launch_token("C-1", "customer", "alice"))
        (cookie,) = await client.context.cookies()
        await gw.gateway.repo.delete_session(secret_hash(cookie["value"]))
        await client.choose(random_file(tmp_path / "late.bin", 1000))
        row = client.transfer("late.bin")
        await expect(row).to_have_attribute("data-state", "failed")
        await expect(row.locator(".transfer-detail")).to_have_text(
            "Your session has expired; open the transfer page again from the portal."
        )

    async with running_gateway(tmp_path / "small", max_upload_size=MiB) as small:
        await small.gateway.cases.open(SYSTEM, "C-1")
        async with ClientPage.open(browser, small.url) as client:
            await client.launch(small.launch_token("C-1", "customer", "alice"))
            await client.choose(random_file(tmp_path / "huge.bin", 2 * MiB))
            row = client.transfer("huge.bin")
            await expect(row).to_have_attribute("data-state", "failed")
            await expect(row.locator(".transfer-detail")).to_have_text(
                "The file exceeds the gateway's size limit of 1048576 bytes."
            )
            text = await client.page.locator("#app").text_content() or ""
            assert "_" not in text.replace("huge.bin", "")


async def test_pause_stops_sending_resume_continues_cancel_discards(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """Pause sends nothing until Resume, which continues to the end; Cancel deletes what the gateway had."""
    keep = random_file(tmp_path / "keep.bin", 8 * MiB)
    drop = random_file(tmp_path / "drop.bin", 8 * MiB)
    token = gw.token("C-1")
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    # Slow (each file gets 300 kB/s): Pause and Cancel land mid-upload even when polling takes seconds.
    await client.throttle(600_000)
    await client.choose(keep, drop)
    await wait_for_server_offset(gw.url, token, "C-1", 1)
    await client.page.get_by_role("button", name="Pause upload of keep.bin").click()
    await client.page.get_by_role("button", name="Cancel upload of drop.bin").click()
    await expect(client.transfer("keep.bin")).to_have_attribute("data-state", "paused")
    await expect(client.transfer("drop.bin")).to_have_attribute("data-state", "cancelled")
    await asyncio.sleep(0.5)
    mark = client.traffic.mark()
    offsets = [u["offset"] for u in await gateway_json(gw.url, token, "/api/v1/cases/C-1/uploads")]
    await asyncio.sleep(1.5)
    assert [r for r in client.traffic.since(mark) if r.method in ("PATCH", "POST")] == []
    assert [u["offset"] for u in await gateway_json(gw.url, token, "/api/v1/cases/C-1/uploads")] == offsets
    assert len(offsets) == 1 and any(r.method == "DELETE" for r in client.traffic.requests)

    await client.unthrottle()
    await client.page.get_by_role("button", name="Resume upload of keep.bin").click()
    await client.wait_done(1)
    files = await gateway_json(gw.url, token, "/api/v1/cases/C-1/files")
    assert [(f["name"], f["sha256"]) for f in files] == [("keep.bin", sha256_of(keep))]
    assert await gateway_json(gw.url, token, "/api/v1/cases/C-1/uploads") == []


async def test_sftp_account_panel_shows_the_account_or_nothing(
    client: ClientPage, gw: RunningGateway
) -> None:
    """The panel lists the case's SFTP account as text when the gateway has one, and is absent on 404."""
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    await expect(client.page.locator("#files-title")).to_be_visible()
    await expect(client.page.locator(".sftp")).to_have_count(0)

    created = await gw.gateway.accounts.create(SYSTEM, "C-1")
    await client.page.reload()
    await expect(client.page.locator(".sftp dd code")).to_contain_text([created.account.username])
    await gw.gateway.accounts.revoke(SYSTEM, created.account.username)

    account = {
        "username": "<b>c1-alice</b>",
        "host": "127.0.0.1",
        "port": 2222,
        "expires_at": "2026-12-01T10:00:00Z",
    }

    async def account_answer(route: Route) -> None:
        # The account endpoint belongs to the SFTP work; here it answers as that endpoint is specified to.
        await route.fulfill(json=account)

    await client.page.route("**/api/v1/cases/C-1/sftp-account", account_answer)
    await client.page.reload()
    panel = client.page.locator(".sftp")
    await expect(panel.locator("dd")).to_have_count(4)
    await expect(panel.locator("dd code")).to_have_text(["127.0.0.1", "2222", "<b>c1-alice</b>"])
    assert await panel.locator("b").count() == 0
