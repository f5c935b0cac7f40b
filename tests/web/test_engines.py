"""The core page flows in Firefox and WebKit, not only Chromium: launch, three files, a network cut
mid-upload, a reload mid-upload and its resume, the verified SHA-256, and axe-core's accessibility rules.

- Firefox: Debian's ``firefox-esr``, driven by npm's ``puppeteer-core`` over WebDriver BiDi
  (``tests/web/node/firefox-core.mjs``); the network cut is the browser's own offline mode.
- WebKit: Debian's ``webkit2gtk-driver`` (WebKitWebDriver with MiniBrowser) through Selenium, on an Xvfb
  display the test starts. Classic WebDriver cannot take a page offline, so the cut is real: the proxy between
  the browser and the gateway resets every connection and refuses new ones, then listens again.

Both browsers reach the gateway through :class:`~tests.web.proxy.CuttableProxy`, which holds uploads to a few
MB/s so that a cut and a reload land in the middle of one. Each test compares three SHA-256s per file: the
one the page shows as verified, the gateway's, and the test's own ``hashlib`` digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eftgw.model import SYSTEM
from tests.support import RunningGateway, running_gateway
from tests.web.axe import AXE_SOURCE, NODE_DIR, RUN_OPTIONS, axe_source, blocking
from tests.web.client import MiB, gateway_json, random_file, sha256_of
from tests.web.conftest import require_built_client
from tests.web.proxy import CuttableProxy, cuttable_proxy
from tests.web.webkit import WebKitPage, start_webkit, xvfb_display

pytestmark = pytest.mark.once

FIREFOX = "/usr/bin/firefox-esr"
CHUNK = 2 * MiB  # the page's first chunk (INITIAL_CHUNK in web-client/src/transfer.ts)
RATE = 3_000_000  # bytes per second through the proxy, all uploads together
OFFLINE = "You appear to be offline. The upload continues by itself when the connection is back."
INTERRUPTED = "The connection to the gateway was interrupted"


@dataclass
class CoreFiles:
    three: list[Path]
    cut: Path
    resume: Path

    @classmethod
    def make(cls, root: Path) -> CoreFiles:
        three = [
            random_file(root / name, size)
            for name, size in (("a.log", MiB), ("b.log", 2 * MiB), ("c.tar", 3 * MiB))
        ]
        return cls(three, random_file(root / "cut.bin", 16 * MiB), random_file(root / "reload.bin", 16 * MiB))

    def expected(self) -> dict[str, str]:
        return {path.name: sha256_of(path) for path in [*self.three, self.cut, self.resume]}


@contextlib.asynccontextmanager
async def proxied_gateway(data_dir: Path) -> AsyncIterator[tuple[RunningGateway, CuttableProxy]]:
    """A gateway with case C-1 open whose public URL is the proxy's (its tus ``Location`` points there)."""
    require_built_client()
    async with cuttable_proxy(0, RATE) as proxy, running_gateway(data_dir, public_url=proxy.url) as gw:
        port = urllib.parse.urlsplit(gw.url).port
        assert port is not None
        proxy.upstream_port = port
        await gw.gateway.cases.open(SYSTEM, "C-1")
        yield gw, proxy


async def check_core_result(
    result: dict[str, Any], files: CoreFiles, gw: RunningGateway, base: str, cut_message: str
) -> None:
    """What both engines must have shown: every step done, hashes verified, the cut and the resume real;
    ``cut_message`` is what the page says while the network is away."""
    assert "error" not in result, (result.get("error"), result["pageErrors"], result["console"][-20:])
    assert result["steps"][-1] == "finished", result["steps"]
    assert result["afterLaunchUrl"] == f"{base}/app"
    expected = files.expected()
    server = {
        f["name"]: f["sha256"] for f in await gateway_json(gw.url, gw.token("C-1"), "/api/v1/cases/C-1/files")
    }
    assert server == expected
    assert result["shown"] == expected
    assert result["table"] == expected

    cut = result["cut"]
    size = files.cut.stat().st_size
    assert CHUNK <= cut["ackedAtCut"] < size, cut
    assert cut["stateWhileOffline"] == "retrying" and cut_message in cut["detail"], cut
    assert cut["ackedWhileOffline"] < size, cut

    reload = result["reload"]
    assert reload["ackedBeforeReload"] >= CHUNK, reload
    assert reload["unfinishedListed"] == [files.resume.name], reload

    for view, violations in result["violations"].items():
        assert not blocking(violations), f"{view}: {blocking(violations)}"
    assert not result["pageErrors"], result["pageErrors"]


async def test_firefox_runs_the_core_flows(tmp_path: Path) -> None:
    """Firefox ESR: launch, three files, a network cut (offline mode) mid-upload, a reload mid-upload and the
    resume from the gateway's offset; every file verified with the right SHA-256; no serious axe violation."""
    node = shutil.which("node")
    if (
        node is None
        or not os.access(FIREFOX, os.X_OK)
        or not (NODE_DIR / "node_modules" / "puppeteer-core").is_dir()
    ):
        pytest.fail(
            f"node, {FIREFOX} or tests/web/node/node_modules is missing: run scripts/install-test-deps-web"
        )
    files = CoreFiles.make(tmp_path / "files")
    async with proxied_gateway(tmp_path / "gw") as (gw, proxy):
        config = {
            "firefox": FIREFOX,
            "axe": str(AXE_SOURCE),
            "axeOptions": RUN_OPTIONS,
            "caseId": "C-1",
            "launchUrl": f"{proxy.url}/launch#{gw.launch_token('C-1', 'customer', 'alice')}",
            "chunk": CHUNK,
            "three": [str(p) for p in files.three],
            "cut": {"path": str(files.cut), "name": files.cut.name},
            "resume": {"path": str(files.resume), "name": files.resume.name},
        }
        config_path = tmp_path / "firefox.json"
        config_path.write_text(json.dumps(config))
        process = await asyncio.create_subprocess_exec(
            node,
            str(NODE_DIR / "firefox-core.mjs"),
            str(config_path),
            cwd=NODE_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), 240)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode == 0, stderr.decode()[-3000:]
        result = json.loads(stdout.decode().strip().splitlines()[-1])
        print(f"Firefox: {result.get('version')}")
        assert result.get("version", "").startswith("firefox/"), result.get("version")
        await check_core_result(result, files, gw, proxy.url, OFFLINE)
        # Resumed, not started again: after the reload the first request is a HEAD on the unfinished upload,
        # there is no POST, and the first PATCH starts at or past what the page had seen acknowledged.
        reload = result["reload"]
        requests = reload["requests"]
        assert requests[0]["method"] == "HEAD", requests
        assert "POST" not in {r["method"] for r in requests}, requests
        patches = [r for r in requests if r["method"] == "PATCH"]
        assert patches and int(patches[0]["offset"]) >= reload["ackedBeforeReload"], patches


ROW = """Array.from(document.querySelectorAll('.transfer-list > li'))
    .find((li) => li.querySelector('.transfer-name')?.textContent === {name})"""
SHOWN = """return Object.fromEntries(
    Array.from(document.querySelectorAll('.transfer-list > li[data-state=done]')).map((li) => [
        li.querySelector('.transfer-name').textContent,
        li.querySelector('.transfer-hash code')?.textContent ?? '',
    ]))"""
TABLE = """return Object.fromEntries(
    Array.from(document.querySelectorAll('.files-table tbody tr')).map((tr) => [
        tr.querySelector('.file-name').textContent,
        tr.querySelector('code.sha256').textContent,
    ]))"""
AXE_RUN = """const done = arguments[arguments.length - 1];
axe.run(document, arguments[0]).then(
    (r) => done(r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
        nodes: v.nodes.map((n) => ({target: n.target.join(' '), summary: n.failureSummary}))}))),
    (e) => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]))"""


def row(name: str) -> str:
    return ROW.format(name=json.dumps(name))


async def webkit_axe(page: WebKitPage) -> list[dict[str, Any]]:
    if not await page.js("return typeof window.axe === 'object'"):
        await page.js(axe_source())
    result: list[dict[str, Any]] = await page.js_async(AXE_RUN, RUN_OPTIONS)
    return result


async def webkit_core_flows(
    page: WebKitPage, gw: RunningGateway, proxy: CuttableProxy, files: CoreFiles
) -> dict[str, Any]:
    """The same steps as firefox-core.mjs, through WebDriver; the network cut is the proxy's."""
    out: dict[str, Any] = {"steps": [], "violations": {}, "shown": {}, "pageErrors": []}
    done = "document.querySelectorAll('.transfer-list > li[data-state=done]').length === {}"

    out["steps"].append("launch")
    await page.get(f"{proxy.url}/launch#{gw.launch_token('C-1', 'customer', 'alice')}")
    await page.wait_until("document.querySelector('#case-title')?.textContent === 'Case C-1'", "the case")
    out["afterLaunchUrl"] = await page.url()
    out["violations"]["case"] = await webkit_axe(page)

    out["steps"].append("three files")
    await page.choose("#file-input", *map(str, files.three))
    await page.wait_until(done.format(3), "three files done")
    out["shown"].update(await page.js(SHOWN))
    out["violations"]["files"] = await webkit_axe(page)

    out["steps"].append("network cut")
    name = files.cut.name
    await page.choose("#file-input", str(files.cut))
    await page.wait_until(
        f"({row(name)})?.querySelector('progress')?.value >= {CHUNK}", "a chunk acknowledged"
    )
    proxy.cut()
    cut: dict[str, Any] = {
        "ackedAtCut": await page.js(f"return ({row(name)}).querySelector('progress').value")
    }
    await page.wait_until(f"({row(name)})?.dataset.state === 'retrying'", "retrying")
    for _ in range(300):  # until three attempts met the dead link (at most 30 s)
        if proxy.reset_while_cut >= 3:
            break
        await asyncio.sleep(0.1)
    cut["resetWhileCut"] = proxy.reset_while_cut
    cut["detail"] = await page.js(f"return ({row(name)}).querySelector('.transfer-detail').textContent")
    cut["stateWhileOffline"] = await page.js(f"return ({row(name)}).dataset.state")
    cut["ackedWhileOffline"] = await page.js(f"return ({row(name)}).querySelector('progress').value")
    out["cut"] = cut
    proxy.restore()
    await page.wait_until(done.format(4), "the cut file done")
    out["shown"].update(await page.js(SHOWN))

    out["steps"].append("reload and resume")
    name = files.resume.name
    await page.choose("#file-input", str(files.resume))
    await page.wait_until(
        f"({row(name)})?.querySelector('progress')?.value >= {CHUNK}", "a chunk acknowledged"
    )
    reload: dict[str, Any] = {
        "ackedBeforeReload": await page.js(f"return ({row(name)}).querySelector('progress').value")
    }
    await page.reload()
    reload["unfinishedListed"] = await page.wait_until(
        "Array.from(document.querySelectorAll('.unfinished-item .transfer-name'), (e) => e.textContent)"
        ".filter(Boolean).length && "
        "Array.from(document.querySelectorAll('.unfinished-item .transfer-name'), (e) => e.textContent)",
        "the unfinished upload listed",
    )
    out["violations"]["unfinished"] = await webkit_axe(page)
    (unfinished,) = await gateway_json(gw.url, gw.token("C-1"), "/api/v1/cases/C-1/uploads")
    reload["serverOffset"] = unfinished["offset"]
    bytes_before = proxy.bytes_up
    await page.choose("#file-input", str(files.resume))
    await page.wait_until(done.format(1), "the reloaded file done")
    reload["bytesUpForTheRest"] = proxy.bytes_up - bytes_before
    reload["unfinishedAfter"] = await gateway_json(gw.url, gw.token("C-1"), "/api/v1/cases/C-1/uploads")
    out["reload"] = reload
    out["shown"].update(await page.js(SHOWN))
    await page.wait_until(
        f"document.querySelectorAll('.files-table tbody tr').length === {len(files.three) + 2}", "5 files"
    )
    out["table"] = await page.js(TABLE)
    out["violations"]["done"] = await webkit_axe(page)
    out["steps"].append("finished")
    return out


async def test_webkit_runs_the_core_flows(tmp_path: Path) -> None:
    """WebKitGTK: launch, three files, a network cut (the link resets every connection) mid-upload, a reload
    mid-upload and the resume, which sends only what the gateway lacks; every file verified with the right
    SHA-256; no serious axe violation."""
    files = CoreFiles.make(tmp_path / "files")
    async with proxied_gateway(tmp_path / "gw") as (gw, proxy):
        with xvfb_display() as display:
            page = WebKitPage(await asyncio.to_thread(start_webkit, display))
            try:
                print(f"WebKit: {page.version}")
                result = await webkit_core_flows(page, gw, proxy, files)
            finally:
                await page.quit()
        await check_core_result(result, files, gw, proxy.url, INTERRUPTED)
        reload = result["reload"]
        assert result["cut"]["resetWhileCut"] >= 3, result["cut"]
        assert reload["serverOffset"] >= reload["ackedBeforeReload"], reload
        # Resumed, not started again: the unfinished upload is the one that completed (the gateway created
        # exactly one upload of the file), and less than the whole file went through the link again (a chunk
        # in flight when a request stalled may be sent twice, so the bound is the file, not the rest alone).
        assert reload["unfinishedAfter"] == [], reload
        events = await gw.gateway.repo.list_audit("C-1")
        created = [
            e for e in events if e.action == "upload.created" and e.detail.get("name") == files.resume.name
        ]
        assert len(created) == 1, created
        size = files.resume.stat().st_size
        assert reload["bytesUpForTheRest"] < size, reload
