"""Interruptions the page survives unasked: a dead network, a reload, a gateway restart, a damaged chunk."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NoReturn

import pytest
from playwright.async_api import Browser, Request, Route, expect

from eftgw.errors import StorageUnavailable
from tests.support import GatewayProcess, RunningGateway
from tests.web.client import ClientPage, MiB, gateway_json, random_file, sha256_of, wait_for_server_offset
from tests.web.conftest import require_built_client

pytestmark = pytest.mark.once


async def listed_sha256(base_url: str, token: str, name: str) -> str:
    files = await gateway_json(base_url, token, "/api/v1/cases/C-1/files")
    (match,) = [f for f in files if f["name"] == name]
    return str(match["sha256"])


async def test_network_drop_mid_upload_recovers_without_user_action(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """Requests aborted for a while mid-upload are retried with backoff, and the upload finishes untouched."""
    source = random_file(tmp_path / "net.bin", 12 * MiB)
    token = gw.token("C-1")
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    await client.throttle(3_000_000)
    await client.choose(source)
    await wait_for_server_offset(gw.url, token, "C-1", 1)
    aborted: list[str] = []

    async def network_down(route: Route) -> None:
        aborted.append(route.request.method)
        await route.abort("internetdisconnected")

    await client.page.route("**/api/v1/**", network_down)
    row = client.transfer("net.bin")
    await expect(row).to_have_attribute("data-state", "retrying", timeout=30_000)
    await expect(row.locator(".transfer-detail")).to_contain_text(
        "The connection to the gateway was interrupted"
    )
    for _ in range(300):  # until a few attempts have hit the dead network (at most 30 s)
        if len(aborted) >= 3:
            break
        await asyncio.sleep(0.1)
    assert len(aborted) >= 3
    await client.page.unroute("**/api/v1/**")
    await client.wait_done(1, within=90_000)
    assert await listed_sha256(gw.url, token, "net.bin") == sha256_of(source)
    assert {"HEAD", "PATCH"} & set(aborted)


async def test_reload_mid_upload_resumes_from_the_gateways_offset(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """After a reload the page lists the unfinished upload and, given the same file, sends only the rest."""
    source = random_file(tmp_path / "reload.bin", 16 * MiB)
    size = source.stat().st_size
    token = gw.token("C-1")
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    await client.throttle(2_000_000)
    await client.choose(source)
    before = await wait_for_server_offset(gw.url, token, "C-1", 2 * MiB)
    await client.page.reload()
    unfinished = client.page.locator(".unfinished-item")
    await expect(unfinished).to_have_count(1)
    await expect(unfinished.locator(".transfer-name")).to_have_text("reload.bin")
    upload = (await gateway_json(gw.url, token, "/api/v1/cases/C-1/uploads"))[0]
    assert upload["url"] == before["url"] and upload["offset"] >= before["offset"]

    mark = client.traffic.mark()
    await client.choose(source)
    await client.wait_done(1, within=90_000)
    after = client.traffic.since(mark)
    uploads = [r for r in after if "/uploads" in r.url and r.method != "GET"]
    assert uploads[0].method == "HEAD" and uploads[0].url == upload["url"]
    assert not [r for r in uploads if r.method == "POST"]
    patches = [r for r in uploads if r.method == "PATCH"]
    assert int(patches[0].headers["upload-offset"]) >= upload["offset"] > 0
    sent = sum(r.body_size for r in patches)
    assert sent <= size - upload["offset"] < size
    assert await listed_sha256(gw.url, token, "reload.bin") == sha256_of(source)
    await expect(client.transfer("reload.bin").locator(".transfer-hash code")).to_have_text(sha256_of(source))
    await expect(unfinished).to_have_count(0)


async def test_a_file_with_the_same_name_and_size_is_not_taken_for_the_unfinished_one(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """Resuming matches content, not just name and size: another file starts anew; the real one resumes."""
    real = random_file(tmp_path / "one" / "same.log", 6 * MiB)
    decoy = random_file(tmp_path / "two" / "same.log", 6 * MiB)
    token = gw.token("C-1")
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    # Slow, so the Pause lands mid-upload even on a loaded machine (about 8 s are left after the first chunk).
    await client.throttle(500_000)
    await client.choose(real)
    await wait_for_server_offset(gw.url, token, "C-1", 1)
    await client.page.get_by_role("button", name="Pause upload of same.log").click()
    await client.unthrottle()
    await client.page.reload()
    (unfinished,) = await gateway_json(gw.url, token, "/api/v1/cases/C-1/uploads")
    assert unfinished["offset"] > 0

    mark = client.traffic.mark()
    await client.choose(decoy)
    await client.wait_done(1, within=60_000)
    decoy_requests = [r for r in client.traffic.since(mark) if "/uploads" in r.url and r.method != "GET"]
    assert decoy_requests[0].method == "POST"
    assert all(r.url != unfinished["url"] for r in decoy_requests)
    await expect(client.page.locator(".unfinished-item")).to_have_count(1)

    mark = client.traffic.mark()
    async with client.page.expect_file_chooser() as chooser_info:
        await client.page.get_by_role("button", name="Select file to resume: same.log").click()
    await (await chooser_info.value).set_files(real)
    await client.wait_done(2, within=60_000)
    resumed = [r for r in client.traffic.since(mark) if "/uploads" in r.url and r.method != "GET"]
    assert resumed[0].method == "HEAD" and resumed[0].url == unfinished["url"]
    files = await gateway_json(gw.url, token, "/api/v1/cases/C-1/files")
    assert sorted(f["sha256"] for f in files) == sorted([sha256_of(real), sha256_of(decoy)])


async def test_a_chunk_damaged_in_flight_is_rejected_and_sent_again(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """A chunk altered on the way fails its SHA-256 check (460), is re-sent intact; the file is exact."""
    source = random_file(tmp_path / "tamper.bin", 9 * MiB)
    tampered: list[str] = []

    async def tamper_once(route: Route) -> None:
        request = route.request
        offset = request.headers.get("upload-offset", "")
        if request.method == "PATCH" and offset not in ("", "0") and not tampered:
            body = bytearray(request.post_data_buffer or b"")
            body[len(body) // 2] ^= 0xFF
            tampered.append(offset)
            await route.continue_(post_data=bytes(body))
            return
        await route.continue_()

    await client.page.route("**/api/v1/cases/C-1/uploads/*", tamper_once)
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    await client.choose(source)
    await client.wait_done(1, within=60_000)
    assert len(tampered) == 1
    patches = [r for r in client.traffic.patches() if r.headers.get("upload-offset") == tampered[0]]
    assert [r.status for r in patches] == [460, 204]
    token = gw.token("C-1")
    assert await listed_sha256(gw.url, token, "tamper.bin") == sha256_of(source)
    await expect(client.transfer("tamper.bin").locator(".transfer-hash code")).to_have_text(sha256_of(source))


async def test_gateway_restart_mid_upload_finishes(browser: Browser, tmp_path: Path) -> None:
    """The gateway killed (-9) and started again mid-upload: the page carries on; the file is exact."""
    require_built_client()
    proc = GatewayProcess(tmp_path / "gw").start()
    try:
        proc.open_case("C-1")
        token = proc.token("C-1")
        launch = proc.cli("token", "C-1", "--role", "customer", "--user", "alice", "--launch").stdout.strip()
        source = random_file(tmp_path / "restart.bin", 16 * MiB)
        async with ClientPage.open(browser, proc.url) as client:
            await client.launch(launch)
            await client.throttle(2_000_000)
            await client.choose(source)
            await wait_for_server_offset(proc.url, token, "C-1", 2 * MiB)
            proc.kill9()
            row = client.transfer("restart.bin")
            await expect(row).to_have_attribute("data-state", "retrying", timeout=30_000)
            await asyncio.sleep(1)
            proc.start()
            await client.wait_done(1, within=120_000)
            assert await listed_sha256(proc.url, token, "restart.bin") == sha256_of(source)
            await expect(row.locator(".transfer-hash code")).to_have_text(sha256_of(source))
    finally:
        proc.stop()


async def test_offline_then_online_continues_at_once(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """Offline, the page says so and waits; back online it continues at once, not after its backoff.

    The page's clock is paused while it is back online, so no backoff timer can fire: the upload request
    that follows can only come from the page reacting to the browser's ``online`` event."""
    source = random_file(tmp_path / "wifi.bin", 10 * MiB)
    token = gw.token("C-1")
    page = client.page
    await page.clock.install()  # fake timers that keep real time until paused
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    await client.throttle(2_000_000)
    await client.choose(source)
    await wait_for_server_offset(gw.url, token, "C-1", 1)
    await client.set_offline(True)
    row = client.transfer("wifi.bin")
    await expect(row.locator(".transfer-detail")).to_have_text(
        "You appear to be offline. The upload continues by itself when the connection is back.",
        timeout=30_000,
    )
    await expect(row).to_have_attribute("data-state", "retrying")
    await page.clock.pause_at(await page.evaluate("Date.now() + 1"))  # from here on, no timer fires

    def upload_request(request: Request) -> bool:
        return request.method in ("HEAD", "PATCH") and "/uploads/" in request.url

    async with page.expect_request(upload_request, timeout=30_000):
        await client.set_offline(False)
    await page.clock.resume()
    await client.wait_done(1, within=60_000)
    assert await listed_sha256(gw.url, token, "wifi.bin") == sha256_of(source)


async def test_storage_outage_is_explained_and_waited_out(
    client: ClientPage, gw: RunningGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a storage outage (503) the page shows the gateway's sentence and retries till it is back."""
    source = random_file(tmp_path / "outage.bin", 8 * MiB)
    token = gw.token("C-1")
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    await client.throttle(2_000_000)
    await client.choose(source)
    await wait_for_server_offset(gw.url, token, "C-1", 1)
    store = gw.gateway.store
    working = store.open_writer

    async def unavailable(*args: object, **kwargs: object) -> NoReturn:
        raise StorageUnavailable()

    monkeypatch.setattr(store, "open_writer", unavailable)
    row = client.transfer("outage.bin")
    await expect(row).to_have_attribute("data-state", "retrying", timeout=30_000)
    await expect(row.locator(".transfer-detail")).to_contain_text(
        "File storage is unavailable right now; your upload is kept, try again shortly."
    )
    monkeypatch.setattr(store, "open_writer", working)
    await client.wait_done(1, within=60_000)
    assert await listed_sha256(gw.url, token, "outage.bin") == sha256_of(source)
