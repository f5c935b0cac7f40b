"""The integration API for the portal (``service`` role): case lifecycle and launch tokens.

``POST /api/v1/integration/cases/{case_id}/open|close|reopen`` (close takes an optional JSON
``{"closed_at": ISO 8601}``), ``GET /api/v1/integration/cases/{case_id}``, and
``POST /api/v1/integration/launch-tokens`` (``{"case_id", "user", "role", "ttl"}``) returning a one-time
launch token and the URL to open in the pop-up.
"""

from __future__ import annotations

from aiohttp import web

from eftgw.clock import parse_instant
from eftgw.errors import BadRequest
from eftgw.http.bodies import json_object
from eftgw.http.keys import gateway_of
from eftgw.http.session import service_principal
from eftgw.model import Principal, Role

routes = web.RouteTableDef()


@routes.post("/api/v1/integration/cases/{case_id}/{action:open|close|reopen}")
async def case_action(request: web.Request) -> web.StreamResponse:
    principal = await service_principal(request)
    gateway = gateway_of(request)
    case_id, action = request.match_info["case_id"], request.match_info["action"]
    if action == "open":
        await gateway.cases.open(principal, case_id)
    elif action == "reopen":
        await gateway.cases.reopen(principal, case_id)
    else:
        body = await json_object(request)
        raw = body.get("closed_at")
        try:
            at = parse_instant(raw) if isinstance(raw, str) else None
        except ValueError as exc:
            raise BadRequest("closed_at must be an ISO 8601 time.") from exc
        await gateway.cases.close(principal, case_id, at)
    view = await gateway.cases.view(Principal(principal.user, Role.ENGINEER), case_id)
    return web.json_response(view.as_json())


@routes.get("/api/v1/integration/cases/{case_id}")
async def case_show(request: web.Request) -> web.StreamResponse:
    principal = await service_principal(request)
    view = await gateway_of(request).cases.view(
        Principal(principal.user, Role.ENGINEER), request.match_info["case_id"]
    )
    return web.json_response(view.as_json())


@routes.post("/api/v1/integration/launch-tokens")
async def launch_token(request: web.Request) -> web.StreamResponse:
    await service_principal(request)
    gateway = gateway_of(request)
    body = await json_object(request)
    try:
        role = Role(body.get("role", "customer"))
    except ValueError as exc:
        raise BadRequest("role must be 'customer' or 'engineer'.") from exc
    if role is Role.SERVICE:
        raise BadRequest("role must be 'customer' or 'engineer'.")
    case_id, user = body.get("case_id"), body.get("user")
    if not isinstance(user, str) or not user or (case_id is not None and not isinstance(case_id, str)):
        raise BadRequest("user (and, for customers, case_id) are required strings.")
    ttl = body.get("ttl", 120)
    if not isinstance(ttl, int) or not 10 <= ttl <= gateway.settings.launch_token_max_ttl:
        raise BadRequest(f"ttl must be between 10 and {gateway.settings.launch_token_max_ttl} seconds.")
    if case_id is not None:
        await gateway.cases.get(case_id)
    token = gateway.signer.mint(role=role, user=user, case_id=case_id, ttl=ttl, typ="launch")
    url = f"{gateway.settings.resolved_public_url}/launch#{token}"
    return web.json_response({"token": token, "launch_url": url, "expires_in": ttl}, status=201)
