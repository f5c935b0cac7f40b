"""The files API: the case, its files, their content with single ranges (resumable downloads), deletion.

``GET /api/v1/cases/{case_id}`` (state and purge date), ``GET /api/v1/cases/{case_id}/files`` (JSON list, in
pages: ``limit``, ``cursor``, ``Link: rel="next"``),
``GET|HEAD|DELETE /api/v1/cases/{case_id}/files/{file_id}``, and
``GET|HEAD /api/v1/cases/{case_id}/files/{file_id}/content`` with ``Range`` / ``If-Range``.

A whole-file download is checked against the file's recorded SHA-256 while it streams (see
:mod:`eftgw.scrub`); the last block waits for the check. Once the headers are out no error response is
possible, so a damaged file, or a store failing midway, cuts the connection: the client sees a failed transfer
(fewer bytes than ``Content-Length``), never a clean end.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from aiohttp import web

from eftgw import metrics
from eftgw.cases import CaseView
from eftgw.clock import isoformat
from eftgw.errors import RangeNotSatisfiable
from eftgw.hashing import repr_digest
from eftgw.http.headers import parse_range
from eftgw.http.keys import gateway_of
from eftgw.http.middleware import client_gone
from eftgw.http.pages import page_params, page_response
from eftgw.http.session import authenticate
from eftgw.model import FileRecord
from eftgw.scrub import DamagedFile, verified

log = logging.getLogger("eftgw.http.files")
routes = web.RouteTableDef()


def file_json(record: FileRecord, view: CaseView | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "size": record.size,
        "sha256": record.sha256,
        "xxh128": record.xxh128,
        "uploaded_at": isoformat(record.uploaded_at),
        "uploaded_by": record.uploaded_by,
        "source": record.source,
        "via": record.via,
        "content_type": record.content_type,
    }
    if view is not None:
        out["purge_due_at"] = isoformat(view.purge_due_at) if view.purge_due_at else None
    return out


def content_disposition(name: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact name as RFC 5987 ``filename*``."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%;' else "_" for c in name) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@routes.get("/api/v1/cases/{case_id}")
async def get_case(request: web.Request) -> web.StreamResponse:
    principal = await authenticate(request)
    view = await gateway_of(request).cases.view(principal, request.match_info["case_id"])
    return web.json_response(view.as_json())


@routes.get("/api/v1/cases/{case_id}/files")
async def list_files(request: web.Request) -> web.StreamResponse:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    case_id = request.match_info["case_id"]
    view = await gateway.cases.view(principal, case_id)
    limit, cursor = page_params(request)
    page = await gateway.files.page(principal, case_id, limit, cursor)
    response = page_response(request, page, [file_json(r, view) for r in page.items], limit)
    response.headers["Eftgw-Case-State"] = view.case.state.value
    if view.purge_due_at:
        response.headers["Eftgw-Purge-Due-At"] = isoformat(view.purge_due_at)
    return response


@routes.get("/api/v1/cases/{case_id}/files/{file_id}")
async def get_file(request: web.Request) -> web.StreamResponse:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    case_id = request.match_info["case_id"]
    record = await gateway.files.get(principal, case_id, request.match_info["file_id"])
    view = await gateway.cases.view(principal, case_id)
    return web.json_response(file_json(record, view))


@routes.delete("/api/v1/cases/{case_id}/files/{file_id}")
async def delete_file(request: web.Request) -> web.StreamResponse:
    principal = await authenticate(request)
    await gateway_of(request).files.delete(
        principal, request.match_info["case_id"], request.match_info["file_id"]
    )
    return web.Response(status=204)


@routes.get("/api/v1/cases/{case_id}/files/{file_id}/content")
async def content(request: web.Request) -> web.StreamResponse:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    case_id, file_id = request.match_info["case_id"], request.match_info["file_id"]
    record = await gateway.files.get(principal, case_id, file_id)
    etag = f'"{record.sha256}"'
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Disposition": content_disposition(record.name),
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Repr-Digest": repr_digest(record.sha256),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if_range = request.headers.get("If-Range")
    range_header = request.headers.get("Range") if if_range in (None, etag) else None
    try:
        span = parse_range(range_header, record.size)
    except RangeNotSatisfiable:
        return web.json_response(
            {"code": "range_not_satisfiable", "message": "The requested range is outside the file."},
            status=416,
            headers={"Content-Range": f"bytes */{record.size}", "Accept-Ranges": "bytes"},
        )
    start, end = span or (0, record.size)
    status = 206 if span is not None else 200
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{record.size}"
    if request.method == "HEAD":
        head = web.StreamResponse(status=status, headers=headers)
        head.content_length = end - start
        await head.prepare(request)
        await head.write_eof()
        return head
    download = await gateway.files.open(principal, case_id, file_id, start, end)
    stream = verified(record, download.stream) if span is None else download.stream
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    await response.prepare(request)
    try:
        async for block in stream:
            await response.write(block)
            metrics.DOWNLOADED_BYTES.inc(len(block))
    except ConnectionError:
        if client_gone(request):
            raise  # the client went away: errors_middleware logs a client abort (info, 499), not an error
        log.exception("download of file %s of case %s failed midway; connection cut", file_id, case_id)
        _cut(request)
        return response
    except DamagedFile:
        _cut(request)  # logged and counted by verified()
        return response
    except Exception:
        log.exception("download of file %s of case %s failed midway; connection cut", file_id, case_id)
        _cut(request)
        return response
    await response.write_eof()
    return response


def _cut(request: web.Request) -> None:
    """End the connection at once, so the client sees a failed transfer (the headers are already sent)."""
    if request.transport is not None:
        request.transport.abort()
