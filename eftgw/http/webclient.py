"""The browser File Transfer Client, served from the gateway's own origin (no other origin is ever involved).

The client is built from ``web-client/`` by ``scripts/build-web-client`` into ``web-client/dist``:
``index.html`` plus content-hashed bundles in ``dist/assets/``. An installed package (wheel) carries that
build as package data, ``eftgw/web_client/``; a source checkout serves ``web-client/dist`` itself.
Routes (pages and static files, not API):

- ``GET /launch``: the page the portal opens as ``/launch#<launch token>``. The token is in the fragment, so
  it never reaches this server, its logs or a ``Referer``; the page's script removes it from the address bar
  at once and exchanges it at ``POST /api/v1/session``. (``POST /launch`` with a form is in ``session.py``.)
- ``GET /app``: the same page once a session exists (``/app?case=C-1`` lets an engineer open a case).
- ``GET /``: a short page saying what this gateway is and how to start (``welcome.html``, no script).
- ``GET /assets/{name}``: the bundles; immutable, since every name carries a hash of its content.

The pages are served ``no-store``: the HTML names the current bundles and must never be stale.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from eftgw.errors import DomainError, FileNotFound

routes = web.RouteTableDef()

PACKAGED = Path(__file__).resolve().parents[1] / "web_client"
CHECKOUT = Path(__file__).resolve().parents[2] / "web-client" / "dist"
ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".png": "image/png",
}


class WebClientMissing(DomainError):
    code = "web_client_missing"
    status = 503
    default_message = "The file transfer page is not built on this gateway; run scripts/build-web-client."


def dist_dir() -> Path:
    """Where the built client lives: in the installed package, else ``web-client/dist`` of the checkout."""
    return PACKAGED if (PACKAGED / "index.html").is_file() else CHECKOUT


@routes.get("/launch")
@routes.get("/app")
async def page(request: web.Request) -> web.StreamResponse:
    """The single page of the client; its script reads the path to know whether it is launching."""
    index = dist_dir() / "index.html"
    if not index.is_file():
        raise WebClientMissing()
    return web.FileResponse(
        index, headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}
    )


@routes.get("/")
async def welcome(request: web.Request) -> web.StreamResponse:
    """What a person who opens the gateway's address sees: what this is and how to start."""
    page = dist_dir() / "welcome.html"
    if not page.is_file():
        raise WebClientMissing()
    return web.FileResponse(
        page, headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}
    )


@routes.get("/assets/{name}")
async def asset(request: web.Request) -> web.StreamResponse:
    """A built bundle by its exact file name; nothing outside ``dist/assets`` can be named."""
    name = request.match_info["name"]
    path = dist_dir() / "assets" / name
    content_type = CONTENT_TYPES.get(path.suffix)
    if not ASSET_NAME.match(name) or content_type is None or not path.is_file():
        raise FileNotFound("No such file.")
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "public, max-age=31536000, immutable"}
    )
