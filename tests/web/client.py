"""Driving the File Transfer Client in Chromium: the page, what it sent, and what the gateway holds."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, CDPSession, Error, Locator, Page, Request, expect

from tests.support import ROOT, http_session

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
MiB = 1024 * 1024


def random_file(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes (written in pieces, so memory stays small)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        left = size
        while left:
            piece = min(left, 4 * MiB)
            out.write(os.urandom(piece))
            left -= piece
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(4 * MiB), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class SentRequest:
    method: str
    url: str
    headers: dict[str, str]
    body_size: int
    status: int | None = None


@dataclass
class Traffic:
    """Every request the page made, in order, with its status once answered."""

    requests: list[SentRequest] = field(default_factory=list)
    by_request: dict[int, SentRequest] = field(default_factory=dict)
    in_flight_patches: int = 0
    max_in_flight_patches: int = 0

    def uploads(self) -> list[SentRequest]:
        return [
            r
            for r in self.requests
            if "/uploads" in r.url and r.method in ("POST", "HEAD", "PATCH", "DELETE")
        ]

    def patches(self) -> list[SentRequest]:
        return [r for r in self.requests if r.method == "PATCH"]

    def mark(self) -> int:
        return len(self.requests)

    def since(self, mark: int) -> list[SentRequest]:
        return self.requests[mark:]


class ClientPage:
    """One browser context (its own cookies) with one page of the client."""

    def __init__(self, context: BrowserContext, page: Page, base_url: str) -> None:
        self.context = context
        self.page = page
        self.base_url = base_url
        self.traffic = Traffic()
        self.console: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        self._cdp: CDPSession | None = None
        self._upload_rate = -1
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("dialog", self._on_dialog)
        page.on("request", self._on_request)
        page.on("requestfinished", self._on_finished)
        page.on("requestfailed", self._on_failed)
        # Playwright turns file chooser interception on without waiting for Chromium to confirm it; a
        # listener from the start makes sure it is on long before a test opens a chooser by keyboard or click.
        page.on("filechooser", lambda _chooser: None)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, browser: Browser, base_url: str, **options: Any) -> AsyncIterator[ClientPage]:
        """A new context; ``options`` go to ``new_context`` (e.g. ``viewport``, ``is_mobile``)."""
        context = await browser.new_context(ignore_https_errors=True, accept_downloads=True, **options)
        try:
            page = await context.new_page()
            page.set_default_timeout(30_000)
            yield cls(context, page, base_url)
        finally:
            await context.close()

    async def _on_dialog(self, dialog: Any) -> None:
        # beforeunload asks before leaving with uploads running; the tests that reload mean it.
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.accept()

    def _on_request(self, request: Request) -> None:
        body = request.post_data_buffer
        sent = SentRequest(request.method, request.url, dict(request.headers), len(body) if body else 0)
        self.traffic.requests.append(sent)
        self.traffic.by_request[id(request)] = sent
        if request.method == "PATCH":
            self.traffic.in_flight_patches += 1
            self.traffic.max_in_flight_patches = max(
                self.traffic.max_in_flight_patches, self.traffic.in_flight_patches
            )

    async def _on_finished(self, request: Request) -> None:
        sent = self.traffic.by_request.get(id(request))
        if request.method == "PATCH":
            self.traffic.in_flight_patches -= 1
        try:
            response = await request.response()
        except Error:  # the page or its context closed before this answer was read: the test is done with it
            return  # (raised here, playwright would report it in the next call, e.g. a later page's opening)
        if sent is not None and response is not None:
            sent.status = response.status

    def _on_failed(self, request: Request) -> None:
        if request.method == "PATCH":
            self.traffic.in_flight_patches -= 1

    # --- actions ----------------------------------------------------------------------------------------

    async def launch(self, token: str) -> None:
        """Open the portal's launch link and wait until the page has settled on a case or an answer."""
        await self.page.goto(f"{self.base_url}/launch#{token}")
        await expect(self.page.locator("#case-title, #picker-title, .fatal")).to_have_count(1)

    async def choose(self, *files: Path | dict[str, Any]) -> None:
        await self.page.set_input_files("#file-input", list(files))  # type: ignore[arg-type]

    async def throttle(self, upload_bytes_per_second: int) -> None:
        """Slow uploads down (DevTools network emulation), so a test can act in the middle of one."""
        self._upload_rate = upload_bytes_per_second
        await self._emulate(offline=False)

    async def unthrottle(self) -> None:
        """Uploads at full speed again (once a test has done what it needed mid-upload)."""
        await self.throttle(-1)

    async def set_offline(self, offline: bool) -> None:
        """Take the page off the network, or back (the browser fires its offline and online events)."""
        await self._emulate(offline=offline)

    async def _emulate(self, offline: bool) -> None:
        if self._cdp is None:
            self._cdp = await self.context.new_cdp_session(self.page)
            await self._cdp.send("Network.enable")
        await self._cdp.send(
            "Network.emulateNetworkConditions",
            {
                "offline": offline,
                "latency": 0,
                "downloadThroughput": -1,
                "uploadThroughput": self._upload_rate,
            },
        )

    # --- reading the page -------------------------------------------------------------------------------

    def transfer(self, name: str) -> Locator:
        """The Transfers row of the file called ``name`` (exact)."""
        return self.page.locator(".transfer-list > li").filter(
            has=self.page.locator(".transfer-name").get_by_text(name, exact=True)
        )

    async def wait_done(self, count: int, within: float = 60_000) -> None:
        await expect(self.page.locator(".transfer-list > li[data-state=done]")).to_have_count(
            count, timeout=within
        )

    async def files(self) -> list[dict[str, str]]:
        """The rows of "Files in this case": name, SHA-256, uploader."""
        rows = self.page.locator(".files-table tbody tr")
        out = []
        for i in range(await rows.count()):
            row = rows.nth(i)
            out.append(
                {
                    "name": await row.locator(".file-name").text_content() or "",
                    "sha256": await row.locator("code.sha256").text_content() or "",
                    "uploader": await row.locator(".uploader").text_content() or "",
                }
            )
        return out

    def csp_violations(self) -> list[str]:
        return [line for line in self.console if "Content Security Policy" in line]


async def gateway_json(base_url: str, token: str, path: str) -> Any:
    async with (
        http_session() as session,
        session.get(base_url + path, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def wait_for_server_offset(
    base_url: str, token: str, case_id: str, minimum: int, within: float = 60
) -> dict[str, Any]:
    """Poll the gateway's list of unfinished uploads until one has at least ``minimum`` bytes acknowledged."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        uploads = await gateway_json(base_url, token, f"/api/v1/cases/{case_id}/uploads")
        for upload in uploads:
            if upload["offset"] >= minimum:
                return dict(upload)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no upload reached {minimum} bytes in {within}s")
