"""The integration API for the portal (``service`` role): case lifecycle and launch tokens.

``POST /api/v1/integration/cases/{case_id}/open|close|reopen`` (close takes an optional JSON
``{"closed_at": ISO 8601}``), ``GET /api/v1/integration/cases/{case_id}``, and
``POST /api/v1/integration/launch-tokens`` (``{"case_id", "user", "role", "ttl"}``) returning a one-time
launch token and the URL to open in the pop-up, and ``GET /api/v1/integration/events?after=&limit=``: the
outbox of integration events (:mod:`eftgw.events`) for portals that poll instead of receiving webhooks.

The events feed is read in ``seq`` order, which is commit order, so an opaque cursor (the last ``seq`` seen)
never skips an event committed later. Every answer carries ``next``, the cursor to poll with next, also as
``Link: <...>; rel="next"``; a page shorter than ``limit`` means the reader is up to date.
"""

from __future__ import annotations

import base64
import binascii
import re

from aiohttp import web

from eftgw.clock import parse_instant
from eftgw.errors import BadRequest
from eftgw.http.bodies import json_object
from eftgw.http.keys import gateway_of
from eftgw.http.session import service_principal
from eftgw.model import Principal, Role

routes = web.RouteTableDef()

EVENTS_DEFAULT_LIMIT = 100
EVENTS_MAX_LIMIT = 1000
_CURSOR_PREFIX = "e1:"
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII digits only: int() would also take "١٢", and "²" would raise
_MAX_SEQ = 2**63 - 1  # the largest seq the database stores


def encode_event_cursor(seq: int) -> str:
    """The opaque cursor that stands for "after the event with this ``seq``"."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_event_cursor(cursor: str | None) -> int:
    """The ``seq`` a cursor of :func:`encode_event_cursor` stands for (0 without one); 400 for others."""
    if cursor is None or cursor == "":
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(
            "after is not a cursor this gateway gave out; omit it to start at the oldest event."
        ) from exc
    number = raw.removeprefix(_CURSOR_PREFIX)
    if not raw.startswith(_CURSOR_PREFIX) or not _DIGITS.fullmatch(number) or int(number) > _MAX_SEQ:
        raise BadRequest("after is not a cursor this gateway gave out; omit it to start at the oldest event.")
    return int(number)


def _events_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return EVENTS_DEFAULT_LIMIT
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= EVENTS_MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {EVENTS_MAX_LIMIT}.")
    return int(raw)


@routes.get("/api/v1/integration/events")
async def events_feed(request: web.Request) -> web.StreamResponse:
    await service_principal(request)
    gateway = gateway_of(request)
    after = decode_event_cursor(request.query.get("after"))
    limit = _events_limit(request.query.get("limit"))
    events = await gateway.repo.events_after(after, limit)
    last = events[-1].seq if events and events[-1].seq is not None else after
    cursor = encode_event_cursor(last)
    response = web.json_response({"events": [event.as_json() for event in events], "next": cursor})
    url = request.rel_url.with_query({"after": cursor, "limit": str(limit)})
    response.headers["Link"] = f'<{gateway.settings.resolved_public_url}{url}>; rel="next"'
    return response


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
