"""Accessibility: axe-core finds no serious or critical violation on any view of the page, in Chromium.

(tests/web/test_engines.py runs the same check in Firefox and WebKit.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from eftgw.model import SYSTEM
from tests.support import RunningGateway
from tests.web.axe import blocking, playwright_violations
from tests.web.client import ClientPage, random_file

pytestmark = pytest.mark.once


async def assert_accessible(client: ClientPage, view: str) -> None:
    violations = await playwright_violations(client.page)
    assert not blocking(violations), f"{view}: {blocking(violations)}"


async def test_every_view_has_no_serious_accessibility_violation(
    browser: Browser, gw: RunningGateway, tmp_path: Path
) -> None:
    """The welcome page, the customer's case with transfers, files, an unfinished upload and the SFTP panel,
    the engineer's case picker and case view with downloads, a closed case, and the error page pass axe-core
    with no serious or critical violation."""
    await gw.gateway.accounts.create(SYSTEM, "C-1")
    async with ClientPage.open(browser, gw.url) as customer:
        await customer.page.goto(gw.url + "/")
        await expect(customer.page.locator("h1")).to_be_visible()
        await assert_accessible(customer, "welcome page")

        await customer.launch(gw.launch_token("C-1", "customer", "alice"))
        await expect(customer.page.locator(".files .empty")).to_be_visible()
        await assert_accessible(customer, "empty case")
        await customer.choose(
            random_file(tmp_path / "a.log", 300_000), random_file(tmp_path / "b.log", 200_000)
        )
        await customer.wait_done(2)
        await customer.throttle(200_000)
        await customer.choose(random_file(tmp_path / "slow.bin", 3_000_000))
        await expect(customer.transfer("slow.bin")).to_have_attribute("data-state", "uploading")
        await customer.page.get_by_role("button", name="Pause upload of slow.bin").click()
        await expect(customer.transfer("slow.bin")).to_have_attribute("data-state", "paused")
        await expect(customer.page.locator(".sftp")).to_be_visible()
        await assert_accessible(customer, "case with transfers and files")
        await customer.page.reload()
        await expect(customer.page.locator(".unfinished-item")).to_have_count(1)
        await assert_accessible(customer, "case with an unfinished upload")

    async with ClientPage.open(browser, gw.url) as engineer:
        await engineer.launch(gw.launch_token(None, "engineer", "eve"))
        await expect(engineer.page.locator("#picker-title")).to_be_visible()
        await assert_accessible(engineer, "engineer's case picker")
        await engineer.page.goto(f"{gw.url}/app?case=C-1")
        await expect(engineer.page.locator(".files-table a.button")).to_have_count(2)
        await assert_accessible(engineer, "engineer's case view")
        await gw.gateway.cases.close(SYSTEM, "C-1")
        await engineer.page.reload()
        await expect(engineer.page.locator(".closed-note")).to_be_visible()
        await assert_accessible(engineer, "closed case")

    async with ClientPage.open(browser, gw.url) as stranger:
        await stranger.launch("not-a-token")
        await expect(stranger.page.locator(".fatal [role=alert]")).to_be_visible()
        await assert_accessible(stranger, "error page")
