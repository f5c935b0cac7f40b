"""Phones and tablets: the page never gets wider than the screen; a wide table scrolls inside its card."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from tests.support import RunningGateway
from tests.web.client import ClientPage, random_file

pytestmark = pytest.mark.once

LONG_NAME = "diagnostics-node-eu-west-1-2026-11-30T10-15-00Z-full-support-bundle-with-heap-dump.tar.gz"
FITS = """() => ({
    document: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
    viewport: window.innerWidth,
})"""
TABLE = """(wrapper) => {
    const card = wrapper.closest('.card');
    const before = wrapper.scrollLeft;
    wrapper.scrollLeft = 80;
    const moved = wrapper.scrollLeft - before;
    wrapper.scrollLeft = before;
    return {
        scrollWidth: wrapper.scrollWidth,
        clientWidth: wrapper.clientWidth,
        cardRight: card.getBoundingClientRect().right,
        wrapperRight: wrapper.getBoundingClientRect().right,
        overflowX: getComputedStyle(wrapper).overflowX,
        moved,
    };
}"""


@pytest.mark.parametrize(
    ("width", "height", "table_must_scroll"), [(390, 844, True), (768, 1024, False)], ids=["phone", "tablet"]
)
async def test_the_page_fits_the_screen_and_the_table_scrolls_in_its_card(
    browser: Browser, gw: RunningGateway, tmp_path: Path, width: int, height: int, table_must_scroll: bool
) -> None:
    """At phone and tablet widths, with a file listed, nothing is wider than the viewport (no sideways
    scrolling of the page), for the customer and for the engineer (whose rows have download links); the files
    table scrolls sideways inside its card when it does not fit."""
    options = {"viewport": {"width": width, "height": height}, "is_mobile": True, "has_touch": True}
    async with ClientPage.open(browser, gw.url, **options) as client:
        await client.launch(gw.launch_token("C-1", "customer", "alice"))
        fits = await client.page.evaluate(FITS)
        assert fits["viewport"] == width and fits["document"] <= width, fits
        await client.choose(random_file(tmp_path / LONG_NAME, 300_000))
        await client.wait_done(1)
        await expect(client.page.locator(".files-table tbody tr")).to_have_count(1)
        # A mobile browser widens its layout viewport to fit wide content, so compare with the device width.
        fits = await client.page.evaluate(FITS)
        assert fits["viewport"] == width and fits["document"] <= width and fits["body"] <= width, fits
        table = await client.page.locator(".files .table-scroll").evaluate(TABLE)
        assert table["overflowX"] == "auto"
        assert table["wrapperRight"] <= table["cardRight"] <= width, table
        if table_must_scroll:
            assert table["scrollWidth"] > table["clientWidth"], table
        if table["scrollWidth"] > table["clientWidth"]:
            assert table["moved"] > 0, table
        # Scrolling the whole page sideways moves nothing.
        await client.page.evaluate("() => window.scrollTo(200, 0)")
        assert await client.page.evaluate("() => window.scrollX") == 0
    async with ClientPage.open(browser, gw.url, **options) as engineer:
        await engineer.launch(gw.launch_token(None, "engineer", "eve"))
        await engineer.page.goto(f"{gw.url}/app?case=C-1")
        await expect(engineer.page.locator(".files-table a.button")).to_have_count(1)
        fits = await engineer.page.evaluate(FITS)
        assert fits["viewport"] == width and fits["document"] <= width, fits
