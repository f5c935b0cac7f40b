"""Pagination of the HTTP list endpoints: ``?limit=&cursor=`` in, the page's items and a ``Link`` out.

The body stays the JSON list it always was; when more items follow, ``Link: <...>; rel="next"`` gives the URL
of the next page (RFC 8288) and ``Eftgw-Next-Cursor`` the bare cursor. The last page has neither.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from eftgw.http.keys import gateway_of
from eftgw.pagination import Page, parse_limit


def page_params(request: web.Request) -> tuple[int, str | None]:
    """The requested page size (default and maximum in :mod:`eftgw.pagination`) and cursor."""
    return parse_limit(request.query.get("limit")), request.query.get("cursor") or None


def page_response(request: web.Request, page: Page[Any], items: list[Any], limit: int) -> web.Response:
    response = web.json_response(items)
    if page.next_cursor is not None:
        base = gateway_of(request).settings.resolved_public_url
        url = request.rel_url.with_query({"limit": str(limit), "cursor": page.next_cursor})
        response.headers["Link"] = f'<{base}{url}>; rel="next"'
        response.headers["Eftgw-Next-Cursor"] = page.next_cursor
    return response
