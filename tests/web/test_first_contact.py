"""First contact: what the gateway's address shows, and a launch link from the command line."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from eftgw.http.webclient import dist_dir
from tests.support import GatewayProcess, RunningGateway, http_session
from tests.web.client import ClientPage
from tests.web.conftest import require_built_client

pytestmark = pytest.mark.once


async def test_the_root_is_a_short_page_saying_what_this_is(gw: RunningGateway) -> None:
    """GET / answers a static HTML page (no script, strict CSP, never cached) that says how to start."""
    async with http_session() as session, session.get(gw.url + "/") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-store"
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        body = await response.text()
    assert body == (dist_dir() / "welcome.html").read_text()
    assert "<script" not in body and "style=" not in body
    assert "Secure file transfer for support cases" in body and "Transfer Files" in body


async def test_the_root_page_renders_under_the_policy(client: ClientPage, gw: RunningGateway) -> None:
    """In Chromium, / shows its heading and how to start, styled from the gateway's own stylesheet."""
    await client.page.goto(gw.url + "/")
    await expect(client.page.get_by_role("heading", level=1)).to_have_text(
        "Secure file transfer for support cases"
    )
    await expect(client.page.locator("main ol li")).to_have_count(3)
    # The stylesheet applied: the top bar has its dark background.
    background = await client.page.locator(".topbar").evaluate("e => getComputedStyle(e).backgroundColor")
    assert background == "rgb(20, 34, 58)"
    assert not client.page_errors and not client.csp_violations()


async def test_eftgw_launch_prints_a_url_that_opens_the_case(browser: Browser, tmp_path: Path) -> None:
    """`eftgw launch CASE --user U`, as the serve banner prints it, prints <public url>/launch#<token>: it
    opens that case as U, once; an unknown case or a too long --ttl is a sentence, exit 2."""
    require_built_client()
    proc = GatewayProcess(tmp_path / "gw").start()
    try:
        proc.open_case("CASE-7")
        # The command as the banner of `eftgw serve` prints it, run in a shell.
        (line,) = [x for x in proc.log_path.read_text().splitlines() if x.startswith("  browser link:")]
        command = line.split(":", 1)[1].strip().replace("CASE-1 --user alice", "CASE-7 --user bob")
        printed = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", command],
            env=proc.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        url = printed.stdout.strip()
        assert url.startswith(f"{proc.url}/launch#") and "\n" not in url
        async with ClientPage.open(browser, proc.url) as client:
            await client.page.goto(url)
            await expect(client.page.locator("#case-title")).to_have_text("Case CASE-7")
            await expect(client.page.locator(".topbar .uploader")).to_have_text("bob")
            assert client.page.url == f"{proc.url}/app"
        async with ClientPage.open(browser, proc.url) as again:
            await again.page.goto(url)
            await expect(again.page.locator(".fatal [role=alert]")).to_have_text(
                "This launch link was already used; open it again from the portal."
            )
        unknown = proc.cli("launch", "NO-SUCH-CASE", check=False)
        assert unknown.returncode == 2 and "Traceback" not in unknown.stderr and unknown.stderr
        too_long = proc.cli("launch", "CASE-7", "--ttl", "100000", check=False)
        assert too_long.returncode == 2 and "--ttl must be between 10 and 300 seconds." in too_long.stderr
    finally:
        proc.stop()
