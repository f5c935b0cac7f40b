"""The gateway serves the built client itself: pages never cached, bundles immutable, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from eftgw.http import webclient
from eftgw.http.webclient import dist_dir
from tests.support import RunningGateway, http_session

pytestmark = pytest.mark.once


async def test_pages_are_the_built_client_and_never_cached(gw: RunningGateway) -> None:
    """/launch and /app serve the built index.html with no-store and the strict CSP."""
    index = (dist_dir() / "index.html").read_text()
    async with http_session() as session:
        for path in ("/launch", "/app", "/app?case=C-1"):
            async with session.get(gw.url + path) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "text/html; charset=utf-8"
                assert response.headers["Cache-Control"] == "no-store"
                assert "script-src 'self'" in response.headers["Content-Security-Policy"]
                assert response.headers["Referrer-Policy"] == "no-referrer"
                assert await response.text() == index


async def test_assets_are_immutable_and_typed(gw: RunningGateway) -> None:
    """Every built bundle is served with its media type and a year-long immutable cache."""
    assets = sorted(p for p in (dist_dir() / "assets").iterdir() if p.is_file())
    assert {p.suffix for p in assets} >= {".js", ".css"}
    async with http_session() as session:
        for asset in assets:
            async with session.get(f"{gw.url}/assets/{asset.name}") as response:
                assert response.status == 200
                assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                assert response.headers["Content-Type"].split(";")[0] in ("text/javascript", "text/css")
                assert await response.read() == asset.read_bytes()


async def test_nothing_outside_the_assets_can_be_named(gw: RunningGateway) -> None:
    """Traversal, hidden files, unknown types and missing names are a plain 404 with a sentence."""
    async with http_session() as session:
        for path in (
            "/assets/..%2Findex.html",
            "/assets/%2e%2e%2f%2e%2e%2fpyproject.toml",
            "/assets/.build-stamp",
            "/assets/missing.js",
            "/assets/index.html",
        ):
            async with session.get(gw.url + path) as response:
                assert response.status == 404, path
                assert (await response.json())["message"] == "No such file."


async def test_an_unbuilt_client_is_a_clear_503(
    gw: RunningGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a build the pages answer 503 with a sentence saying how to build, not a stack trace."""
    monkeypatch.setattr(webclient, "dist_dir", lambda: tmp_path / "nothing-here")
    async with http_session() as session, session.get(gw.url + "/app") as response:
        assert response.status == 503
        assert await response.json() == {
            "code": "web_client_missing",
            "message": "The file transfer page is not built on this gateway; run scripts/build-web-client.",
        }
