"""The page shows a case's whole list even when the gateway sends it in several pages (Link rel=next)."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from eftgw.model import SYSTEM
from eftgw.pagination import DEFAULT_LIMIT
from tests.support import RunningGateway
from tests.web.client import ClientPage

pytestmark = pytest.mark.once


async def test_more_files_than_one_page_are_all_listed(client: ClientPage, gw: RunningGateway) -> None:
    """With one file more than a page holds, the customer's file table shows every file, each once."""
    count = DEFAULT_LIMIT + 1
    for i in range(count):  # zero-length uploads become files at once (the system has no creation quota)
        await gw.gateway.uploads.create(SYSTEM, "C-1", length=0, metadata={"filename": f"f{i:04}.log"})
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    await expect(client.page.locator(".files-table tbody tr")).to_have_count(count, timeout=60_000)
    names = await client.page.eval_on_selector_all(
        ".files-table tbody tr .file-name", "cells => cells.map(cell => cell.textContent)"
    )
    assert sorted(names) == [f"f{i:04}.log" for i in range(count)]
    assert client.page_errors == []
