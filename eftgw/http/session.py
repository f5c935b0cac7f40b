"""Who is calling: bearer tokens for API clients, the session cookie (with CSRF) for the browser; and the
launch flow that turns a portal's launch token into that session.

- ``POST /launch`` (form field ``token``): sets the cookie and redirects to the web client;
- ``POST /api/v1/session`` (JSON ``{"token": ...}``): the same for the web client's own script, which reads
  the token from the URL fragment (never sent to any server, so never in logs or Referer);
- ``GET /api/v1/session``: the current session (and its CSRF token); ``DELETE`` signs out.

The cookie is ``__Host-eftgw_session``: Secure, HttpOnly, SameSite=Strict, Path=/. Unsafe requests
authenticated by the cookie must carry ``X-CSRF-Token`` and, when the browser sends one, a same-origin
``Origin``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from eftgw.auth import AuthService
from eftgw.clock import isoformat
from eftgw.errors import BadRequest, CsrfRejected, Forbidden, Unauthenticated
from eftgw.http.keys import PRINCIPAL_KEY, gateway_of
from eftgw.model import Principal, Role, Session, Via

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

routes = web.RouteTableDef()


def remote_of(request: web.Request) -> str | None:
    return request.remote


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    allowed = {gateway_of(request).settings.resolved_public_url, f"{request.scheme}://{request.host}"}
    return origin.rstrip("/") in allowed


async def authenticate(request: web.Request) -> Principal:
    """The principal of this request, from ``Authorization: Bearer`` or the session cookie."""
    gateway = gateway_of(request)
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Use 'Authorization: Bearer <token>'.")
        principal = await gateway.auth.bearer(token.strip(), remote_of(request))
    else:
        cookie = request.cookies.get(AuthService.COOKIE)
        if not cookie:
            raise Unauthenticated()
        session = await gateway.auth.session(cookie)
        if request.method not in SAFE_METHODS and (
            not AuthService.csrf_ok(session, request.headers.get("X-CSRF-Token")) or not _same_origin(request)
        ):
            raise CsrfRejected()
        principal = AuthService.session_principal(session, remote_of(request))
    request[PRINCIPAL_KEY] = principal
    return principal


async def service_principal(request: web.Request) -> Principal:
    """The case system's service principal; anyone else gets 403 (the integration API is its alone)."""
    principal = await authenticate(request)
    if principal.role is not Role.SERVICE or principal.via is not Via.TOKEN:
        raise Forbidden("The integration API is for the case system's service token.")
    return principal


def session_json(session: Session) -> dict[str, Any]:
    return {
        "user": session.user,
        "role": session.role.value,
        "case_id": session.case_id,
        "csrf_token": session.csrf_token,
        "expires_at": isoformat(session.expires_at),
    }


def _set_cookie(response: web.StreamResponse, secret: str, session: Session, max_age: int) -> None:
    response.set_cookie(
        AuthService.COOKIE, secret, path="/", secure=True, httponly=True, samesite="Strict", max_age=max_age
    )


@routes.post("/launch")
async def launch_form(request: web.Request) -> web.StreamResponse:
    """A portal may POST the launch token as a form instead of putting it in the URL fragment."""
    gateway = gateway_of(request)
    try:
        form = await request.post()
    except ValueError as exc:  # e.g. multipart/form-data without its boundary, or undecodable fields
        raise BadRequest("The launch form must carry a 'token' field.") from exc
    token = form.get("token")
    if not isinstance(token, str) or not token:
        raise BadRequest("The launch form must carry a 'token' field.")
    secret, session = await gateway.auth.launch(token, remote_of(request))
    response = web.HTTPSeeOther("/app")
    _set_cookie(response, secret, session, gateway.settings.session_ttl)
    return response


@routes.post("/api/v1/session")
async def create_session(request: web.Request) -> web.StreamResponse:
    gateway = gateway_of(request)
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest('Send JSON: {"token": "<launch token>"}.') from exc
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise BadRequest('Send JSON: {"token": "<launch token>"}.')
    secret, session = await gateway.auth.launch(token, remote_of(request))
    response = web.json_response(session_json(session), status=201)
    _set_cookie(response, secret, session, gateway.settings.session_ttl)
    return response


@routes.get("/api/v1/session")
async def get_session(request: web.Request) -> web.StreamResponse:
    cookie = request.cookies.get(AuthService.COOKIE)
    if not cookie:
        raise Unauthenticated()
    session = await gateway_of(request).auth.session(cookie)
    return web.json_response(session_json(session))


@routes.delete("/api/v1/session")
async def delete_session(request: web.Request) -> web.StreamResponse:
    gateway = gateway_of(request)
    cookie = request.cookies.get(AuthService.COOKIE)
    if not cookie:
        raise Unauthenticated()
    session = await gateway.auth.session(cookie)
    if not AuthService.csrf_ok(session, request.headers.get("X-CSRF-Token")) or not _same_origin(request):
        raise CsrfRejected()
    await gateway.auth.logout(session, remote_of(request))
    response = web.Response(status=204)
    response.del_cookie(AuthService.COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response
