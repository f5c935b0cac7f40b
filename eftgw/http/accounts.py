"""SFTP accounts over HTTP: the case's own account for its customer and engineers (what the web client
shows: username, host, port, expiry; never the password), and creation, listing and revocation for the
portal through the integration API.

``GET /api/v1/cases/{case_id}/sftp-account`` (404 when the case has none active),
``POST|GET /api/v1/integration/cases/{case_id}/sftp-accounts``,
``DELETE /api/v1/integration/sftp-accounts/{username}``.
"""

from __future__ import annotations

from aiohttp import web

from eftgw.accounts import AccountNotFound
from eftgw.errors import BadRequest
from eftgw.http.bodies import json_object
from eftgw.http.keys import gateway_of
from eftgw.http.pages import page_params, page_response
from eftgw.http.session import authenticate, service_principal

routes = web.RouteTableDef()


@routes.get("/api/v1/cases/{case_id}/sftp-account")
async def case_account(request: web.Request) -> web.StreamResponse:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    case_id = request.match_info["case_id"]
    await gateway.cases.view(principal, case_id)
    issued = await gateway.accounts.current_for_case(principal, case_id)
    if issued is None:
        raise AccountNotFound("This case has no active SFTP account.")
    # No password here: the portal hands it over; a browser session never needs to carry it.
    return web.json_response(gateway.accounts.view(issued.account))


@routes.post("/api/v1/integration/cases/{case_id}/sftp-accounts")
async def create_account(request: web.Request) -> web.StreamResponse:
    principal = await service_principal(request)
    body = await json_object(request)
    keys = body.get("authorized_keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise BadRequest("authorized_keys must be a list of OpenSSH public key lines.")
    issued = await gateway_of(request).accounts.create(
        principal, request.match_info["case_id"], authorized_keys=keys
    )
    return web.json_response(gateway_of(request).accounts.view(issued.account, issued.password), status=201)


@routes.get("/api/v1/integration/cases/{case_id}/sftp-accounts")
async def list_accounts(request: web.Request) -> web.StreamResponse:
    principal = await service_principal(request)
    accounts = gateway_of(request).accounts
    limit, cursor = page_params(request)
    page = await accounts.page_accounts(principal, request.match_info["case_id"], limit, cursor)
    return page_response(request, page, [accounts.view(a) for a in page.items], limit)


@routes.delete("/api/v1/integration/sftp-accounts/{username}")
async def revoke_account(request: web.Request) -> web.StreamResponse:
    principal = await service_principal(request)
    account = await gateway_of(request).accounts.revoke(principal, request.match_info["username"])
    return web.json_response(gateway_of(request).accounts.view(account))
