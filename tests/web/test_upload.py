"""Launching from the portal and uploading: concurrency, chunk checksums, acknowledged progress, listing."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from pathlib import Path

import pytest
from playwright.async_api import Route, expect

from tests.support import RunningGateway
from tests.web.client import ARTIFACTS, ClientPage, MiB, random_file, sha256_of, wait_for_server_offset

pytestmark = pytest.mark.once


async def test_launch_exchanges_the_token_without_leaving_it_anywhere(
    client: ClientPage, gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """The launch token leaves the address bar at once, is in no log, URL or Referer; it becomes a cookie."""
    caplog.set_level(logging.INFO, logger="eftgw.access")
    token = gw.launch_token("C-1", "customer", "alice")
    await client.launch(token)
    page = client.page
    assert page.url == f"{gw.url}/app"
    assert await page.evaluate("() => location.href + '|' + document.referrer") == f"{gw.url}/app|"
    await expect(page.locator("#case-title")).to_have_text("Case C-1")
    await expect(page.locator("[data-case-state]")).to_have_text("Open")
    for request in client.traffic.requests:
        assert token not in request.url
        assert all(token not in value for value in request.headers.values())
    assert token not in caplog.text
    (cookie,) = await client.context.cookies()
    assert cookie["name"] == "__Host-eftgw_session"
    assert (
        cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    )
    # A reload keeps the session; the used link does not work a second time.
    await page.reload()
    await expect(page.locator("#case-title")).to_have_text("Case C-1")
    async with ClientPage.open(page.context.browser, gw.url) as other:  # type: ignore[arg-type]
        await other.launch(token)
        await expect(other.page.locator(".fatal [role=alert]")).to_have_text(
            "This launch link was already used; open it again from the portal."
        )


async def test_three_files_upload_concurrently_with_chunk_checksums(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """Three files go up at once in chunks that each carry a correct SHA-256, and are listed with SHA-256."""
    files = [
        random_file(tmp_path / name, size)
        for name, size in (("a.log", 5 * MiB), ("b.log", 6 * MiB), ("c.tar", 7 * MiB))
    ]
    checked: list[tuple[str, bool]] = []

    async def verify_checksum(route: Route) -> None:
        request = route.request
        if request.method == "PATCH":
            body = request.post_data_buffer or b""
            header = request.headers.get("upload-checksum", "")
            expected = "sha256 " + base64.b64encode(hashlib.sha256(body).digest()).decode()
            checked.append((header, header == expected and bool(request.headers.get("x-csrf-token"))))
        await route.continue_()

    await client.page.route("**/api/v1/cases/C-1/uploads/*", verify_checksum)
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    await client.throttle(4_000_000)
    await client.choose(*files)
    token = gw.token("C-1")
    await wait_for_server_offset(gw.url, token, "C-1", 1)
    await expect(client.page.locator(".transfer-list > li[data-state=uploading]")).to_have_count(3)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await client.page.screenshot(path=str(ARTIFACTS / "web-client-mid-upload.png"), full_page=True)
    await client.wait_done(3)

    assert client.traffic.max_in_flight_patches >= 3
    assert checked and all(ok for _, ok in checked), checked
    expected = {f.name: sha256_of(f) for f in files}
    listed = {row["name"]: row["sha256"] for row in await client.files()}
    assert listed == expected
    for f in files:
        row = client.transfer(f.name)
        await expect(row.locator(".transfer-hash code")).to_have_text(expected[f.name])
        await expect(row.locator("progress")).to_have_attribute("value", str(f.stat().st_size))
    assert not client.page_errors and not client.csp_violations()


async def test_parallel_uploads_are_capped_and_the_rest_wait(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """With five files, three upload at a time (the default) and the others wait their turn, then go."""
    files = [random_file(tmp_path / f"part{i}.bin", 2 * MiB) for i in range(5)]
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    await client.throttle(500_000)
    await client.choose(*files)
    rows = client.page.locator(".transfer-list > li")
    # Fingerprinting five files first can take seconds on a loaded machine; the states are what counts.
    await expect(rows.and_(client.page.locator("[data-state=uploading]"))).to_have_count(3, timeout=30_000)
    await expect(rows.and_(client.page.locator("[data-state=queued]"))).to_have_count(2)
    await client.unthrottle()
    await client.wait_done(5)
    assert {row["name"] for row in await client.files()} == {f.name for f in files}


async def test_every_resource_comes_from_the_gateway_under_a_strict_policy(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """The page loads only from its own origin, has no inline script or style, and runs under the CSP."""
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    await client.choose(random_file(tmp_path / "x.bin", 100_000))
    await client.wait_done(1)
    assert client.traffic.requests
    assert all(r.url.startswith(gw.url + "/") for r in client.traffic.requests), [
        r.url for r in client.traffic.requests
    ]
    response = await client.page.request.get(f"{gw.url}/app")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp
    html = await response.text()
    assert not re.search(r"<script(?![^>]*\ssrc=)", html) and not re.search(r"\s(style|on\w+)=", html)
    inline = await client.page.evaluate(
        "() => [...document.scripts].filter(s => !s.src).length + document.querySelectorAll('[style]').length"
    )
    assert inline == 0
    assert not client.csp_violations() and not client.page_errors


async def test_keyboard_alone_can_choose_files_and_controls_are_labelled(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """Tab reaches "Choose files", Enter opens the picker, and each control names the file it acts on."""
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    page = client.page
    await client.throttle(300_000)  # 3 MiB take 10 s: the keyboard steps land mid-upload on a loaded machine
    choose = page.get_by_role("button", name="Choose files")
    for _ in range(10):
        await page.keyboard.press("Tab")
        if await choose.evaluate("b => b === document.activeElement"):
            break
    else:
        raise AssertionError("Tab never reached the Choose files button")
    async with page.expect_file_chooser() as chooser_info:
        await page.keyboard.press("Enter")
    chooser = await chooser_info.value
    await chooser.set_files(random_file(tmp_path / "kb.log", 3 * MiB))
    pause = page.get_by_role("button", name="Pause upload of kb.log")
    await expect(pause).to_be_visible()
    await expect(
        page.get_by_role("progressbar", name="Upload of kb.log, bytes confirmed by the gateway")
    ).to_be_visible()
    await pause.focus()
    await page.keyboard.press("Enter")
    await expect(client.transfer("kb.log")).to_have_attribute("data-state", "paused")
    await expect(page.get_by_role("button", name="Resume upload of kb.log")).to_be_focused()
    await client.unthrottle()
    await page.keyboard.press("Enter")
    await client.wait_done(1)


async def test_portal_may_post_the_token_instead(client: ClientPage, gw: RunningGateway) -> None:
    """A portal form POSTing the token to /launch lands on the case page with a session; no token in URLs."""
    token = gw.launch_token("C-1", "customer", "alice")
    form = (
        f'<form method="post" action="{gw.url}/launch"><input type="hidden" name="token" value="{token}">'
        '<button type="submit">Transfer Files</button></form>'
    )
    await client.page.set_content(form)
    await client.page.get_by_role("button", name="Transfer Files").click()
    await expect(client.page.locator("#case-title")).to_have_text("Case C-1")
    assert client.page.url == f"{gw.url}/app"
    assert all(token not in r.url for r in client.traffic.requests)


async def test_files_dropped_on_the_drop_zone_upload(client: ClientPage, gw: RunningGateway) -> None:
    """Dropping files on the drop zone uploads them like choosing them does."""
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    zone = client.page.locator("#dropzone")
    data = await client.page.evaluate_handle(
        """() => {
            const transfer = new DataTransfer()
            transfer.items.add(new File(['first dropped file'], 'dropped-1.txt', {type: 'text/plain'}))
            transfer.items.add(new File([new Uint8Array(300000)], 'dropped-2.bin'))
            return transfer
        }"""
    )
    await zone.dispatch_event("dragenter", {"dataTransfer": data})
    await expect(zone).to_have_class(re.compile(r"\bdragging\b"))
    await zone.dispatch_event("drop", {"dataTransfer": data})
    await expect(zone).not_to_have_class(re.compile(r"\bdragging\b"))
    await client.wait_done(2)
    listed = {row["name"]: row["sha256"] for row in await client.files()}
    assert listed == {
        "dropped-1.txt": hashlib.sha256(b"first dropped file").hexdigest(),
        "dropped-2.bin": hashlib.sha256(bytes(300000)).hexdigest(),
    }
