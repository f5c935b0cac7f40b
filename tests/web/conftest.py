"""Fixtures for the browser tests: Debian's Chromium driven by Playwright against a gateway on loopback TLS.

Chromium comes from Debian (``scripts/install-test-deps-web``), never from a Playwright download; the client
is built by ``scripts/build-web-client``. Either missing fails the tests: they are never skipped.

One Chromium serves every test here (starting Playwright's driver and the browser cost 1.5 to 3 s a test);
each test's page has a browser context of its own, so no cookie, storage or cache passes between tests. The
tests and their fixtures therefore run on the session's event loop, the one the browser was started on.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from eftgw.http.webclient import dist_dir
from eftgw.model import SYSTEM
from tests.support import RunningGateway, running_gateway
from tests.web.client import CHROMIUM, CHROMIUM_ARGS, ClientPage

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The browser tests run on the session's event loop, the one the shared browser lives on."""
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("asyncio") is not None:
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)


def require_built_client() -> None:
    if not (dist_dir() / "index.html").is_file():
        pytest.fail(f"the web client is not built ({dist_dir()} is missing): run scripts/build-web-client")


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, started once for the browser tests (each page opens its own context)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-test-deps-web")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture(loop_scope="session")
async def gw(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """An in-process gateway serving the built client, with case ``C-1`` open."""
    require_built_client()
    async with running_gateway(tmp_path / "gw") as running:
        await running.gateway.cases.open(SYSTEM, "C-1")
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def client(browser: Browser, gw: RunningGateway) -> AsyncIterator[ClientPage]:
    """A page in a new browser context (own cookies), bound to the in-process gateway."""
    async with ClientPage.open(browser, gw.url) as page:
        yield page
