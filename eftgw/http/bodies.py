"""Request bodies every JSON endpoint reads the same way (the size cap is the app's ``client_max_size``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from eftgw.errors import BadRequest


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is ``{}``; anything else is a clear 400."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("The body must be JSON.") from exc
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    return body
