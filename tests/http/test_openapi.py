"""The OpenAPI document describes exactly the routes the gateway serves."""

from __future__ import annotations

import pytest

from eftgw.http.app import make_app
from tests.support import RunningGateway, http_session

pytestmark = pytest.mark.once  # the routes against the served document: the backend does not matter here

# Pages for people and the Prometheus endpoint, not API operations.
NOT_API = {("GET", "/"), ("GET", "/launch"), ("GET", "/app"), ("GET", "/metrics"), ("GET", "/assets/{name}")}


def served_operations(gw: RunningGateway) -> set[tuple[str, str]]:
    app = make_app(gw.gateway)
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method == "*":
            continue
        if route.method == "HEAD" and not path.endswith("/uploads/{upload_id}"):
            continue  # aiohttp adds HEAD to every GET
        if path.startswith("/api/v1/integration/cases/{case_id}/{action"):
            for action in ("open", "close", "reopen"):
                out.add((route.method, f"/api/v1/integration/cases/{{case_id}}/{action}"))
            continue
        out.add((route.method, path))
    return out


async def test_document_matches_routes(gw: RunningGateway) -> None:
    """Every served operation is documented, and every documented operation is served."""
    async with http_session() as s, s.get(f"{gw.url}/api/v1/openapi.json") as resp:
        document = await resp.json()
    assert document["openapi"].startswith("3.")
    documented = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    served = {op for op in served_operations(gw) if op not in NOT_API and not op[1].startswith("/assets")}
    assert documented == served
