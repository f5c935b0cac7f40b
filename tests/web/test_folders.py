"""Folders: choosing or dropping one uploads every file in it, each named with its path inside the folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.support import RunningGateway
from tests.web.client import ClientPage, gateway_json, random_file, sha256_of

pytestmark = pytest.mark.once


def log_directory(root: Path) -> dict[str, str]:
    """A customer's log directory: nested folders, an empty one, a name with '%'; upload name -> SHA-256."""
    files = {
        "logs/server.log": 700_000,
        "logs/app/worker-1.log": 1_200_000,
        "logs/app/gc 100%.log": 5_000,
        "logs/app/deep/er/core.txt": 3_000,
    }
    expected = {}
    for relative, size in files.items():
        path = random_file(root / relative, size)
        name = "%2F".join(part.replace("%", "%25") for part in relative.split("/"))
        expected[name] = sha256_of(path)
    (root / "logs" / "empty").mkdir()
    return expected


async def uploaded(gw: RunningGateway) -> dict[str, str]:
    files = await gateway_json(gw.url, gw.token("C-1"), "/api/v1/cases/C-1/files")
    return {f["name"]: f["sha256"] for f in files}


async def test_choosing_a_folder_uploads_every_file_with_its_path(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """ "Choose a folder" sends every file under it (any depth); each is named logs%2Fapp%2F..., verified."""
    expected = log_directory(tmp_path / "pick")
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    async with client.page.expect_file_chooser() as chooser_info:
        await client.page.get_by_role("button", name="Choose a folder").click()
    chooser = await chooser_info.value
    await chooser.set_files(tmp_path / "pick" / "logs")
    await client.wait_done(len(expected))
    assert await uploaded(gw) == expected
    listed = {row["name"]: row["sha256"] for row in await client.files()}
    assert listed == expected
    for name, digest in expected.items():
        await expect(client.transfer(name).locator(".transfer-hash code")).to_have_text(digest)
    assert not client.page_errors


async def test_dropping_a_folder_and_a_file_uploads_them_all(
    client: ClientPage, gw: RunningGateway, tmp_path: Path
) -> None:
    """A real drop (the browser's own drag and drop, through DevTools) of a folder and a loose file sends
    the folder's files with their paths and the loose file under its own name."""
    expected = log_directory(tmp_path / "drop")
    loose = random_file(tmp_path / "drop" / "screenshot.png", 50_000)
    expected["screenshot.png"] = sha256_of(loose)
    await client.launch(gw.launch_token("C-1", "customer", "alice"))
    zone = await client.page.locator("#dropzone").bounding_box()
    assert zone is not None
    x, y = zone["x"] + zone["width"] / 2, zone["y"] + zone["height"] / 2
    cdp = await client.context.new_cdp_session(client.page)
    data = {"items": [], "files": [str(tmp_path / "drop" / "logs"), str(loose)], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        await cdp.send("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})
    await client.wait_done(len(expected))
    assert await uploaded(gw) == expected
    assert not client.page_errors
