"""tus 1.0.0 over HTTPS: core protocol plus creation, creation-with-upload, creation-defer-length,
expiration, checksum, termination and concatenation.

Routes: ``OPTIONS|POST /api/v1/cases/{case_id}/uploads``, ``GET`` of the same lists unfinished uploads (for
the web client's resume after a reload), and ``OPTIONS|HEAD|PATCH|DELETE`` on the ``Location`` returned at
creation, ``/api/v1/cases/{case_id}/uploads/{upload_id}``. A request with ``Upload-Draft-Interop-Version``
speaks the IETF resumable uploads draft instead and goes to :mod:`eftgw.http.resumable` (same URLs, uploads).
"""

from __future__ import annotations

import base64
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from eftgw.clock import isoformat
from eftgw.errors import BadRequest, BodyInterrupted, DomainError, UploadTooLarge
from eftgw.hashing import CHECKSUM_ALGORITHMS, ChunkChecksum
from eftgw.http.headers import parse_integer
from eftgw.http.keys import gateway_of
from eftgw.http.middleware import TUS_VERSION
from eftgw.http.pages import page_params, page_response
from eftgw.http.receive import RequestBody
from eftgw.http.session import authenticate
from eftgw.model import ConcatKind, Upload, UploadState

routes = web.RouteTableDef()

EXTENSIONS = (
    "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination,concatenation"
)
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
MAX_METADATA = 16 * 1024


class UnsupportedMediaType(DomainError):
    code = "unsupported_media_type"
    status = 415
    default_message = f"PATCH bodies must be sent as '{OFFSET_CONTENT_TYPE}'."


class VersionUnsupported(DomainError):
    code = "tus_version_unsupported"
    status = 412
    default_message = f"This server speaks tus {TUS_VERSION}; send 'Tus-Resumable: {TUS_VERSION}'."


def _headers(request: web.Request, **extra: str) -> dict[str, str]:
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    headers.update(extra)
    return headers


def _check_version(request: web.Request) -> None:
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise VersionUnsupported()


def _int_header(request: web.Request, name: str) -> int | None:
    return parse_integer(name, request.headers.get(name))


def parse_metadata(raw: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (value optional)."""
    if not raw:
        return {}
    if len(raw) > MAX_METADATA:
        raise BadRequest("Upload-Metadata is too large.")
    out: dict[str, str] = {}
    for pair in raw.split(","):
        parts = pair.strip().split(" ")
        key = parts[0]
        if not key or len(parts) > 2 or not key.isascii() or key in out:
            raise BadRequest("Upload-Metadata is malformed.")
        try:
            value = base64.b64decode(parts[1], validate=True).decode("utf-8") if len(parts) == 2 else ""
        except ValueError as exc:  # binascii.Error, UnicodeDecodeError, or non-ASCII text
            raise BadRequest(f"Upload-Metadata value of {key!r} is not valid base64 UTF-8.") from exc
        out[key] = value
    return out


def format_metadata(metadata: dict[str, str]) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" if value else key
        for key, value in metadata.items()
    )


def upload_url(request: web.Request, upload: Upload) -> str:
    base = gateway_of(request).settings.resolved_public_url
    return f"{base}/api/v1/cases/{upload.case_id}/uploads/{upload.id}"


def _upload_headers(request: web.Request, upload: Upload) -> dict[str, str]:
    headers = _headers(request)
    if upload.state is UploadState.ACTIVE:
        headers["Upload-Expires"] = format_datetime(upload.expires_at, usegmt=True)
    return headers


def body_of(request: web.Request) -> RequestBody:
    """The request body for the upload pipeline: received by the connection straight into the pipeline's
    blocks where it can be, else read as aiohttp's chunks (:mod:`eftgw.http.receive`); a lost connection
    becomes :class:`BodyInterrupted`, and so does a body that brings no byte for ``EFTGW_BODY_IDLE_TIMEOUT``
    seconds (its connection is closed)."""
    return RequestBody(request, gateway_of(request).settings.body_idle_timeout)


def _partial_ids(request: web.Request, case_id: str, spec: str) -> list[str]:
    ids = []
    for url in spec.split():
        parts = urlsplit(url).path.rstrip("/").split("/")
        if len(parts) < 2 or parts[-2] != "uploads" or "/cases/" + case_id + "/" not in urlsplit(url).path:
            raise BadRequest("Upload-Concat must list upload URLs of this case.")
        ids.append(parts[-1])
    return ids


def _checksum(request: web.Request) -> ChunkChecksum | None:
    header = request.headers.get("Upload-Checksum")
    return ChunkChecksum.parse(header) if header else None


# The draft's handlers build on this module's helpers, so they are imported when a request needs them.
@routes.options("/api/v1/cases/{case_id}/uploads")
@routes.options("/api/v1/cases/{case_id}/uploads/{upload_id}")
async def options(request: web.Request) -> web.StreamResponse:
    from eftgw.http import resumable

    settings = gateway_of(request).settings
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": EXTENSIONS,
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        "Upload-Limit": resumable.limits(request),  # the draft's discovery, on the same OPTIONS
    }
    if settings.max_upload_size is not None:
        headers["Tus-Max-Size"] = str(settings.max_upload_size)
    return web.Response(status=204, headers=headers)


@routes.post("/api/v1/cases/{case_id}/uploads")
async def create(request: web.Request) -> web.StreamResponse:
    from eftgw.http import resumable

    if resumable.is_draft(request):
        return await resumable.create(request)
    _check_version(request)
    principal = await authenticate(request)
    gateway = gateway_of(request)
    case_id = request.match_info["case_id"]
    length = _int_header(request, "Upload-Length")
    defer = request.headers.get("Upload-Defer-Length")
    concat_header = request.headers.get("Upload-Concat", "")
    concat, partial_ids = ConcatKind.NONE, []
    if concat_header == "partial":
        concat = ConcatKind.PARTIAL
    elif concat_header.startswith("final;"):
        concat = ConcatKind.FINAL
        partial_ids = _partial_ids(request, case_id, concat_header.removeprefix("final;"))
    elif concat_header:
        raise BadRequest("Upload-Concat must be 'partial' or 'final;<urls>'.")
    if concat is ConcatKind.FINAL:
        if length is not None:
            raise BadRequest("A final upload must not carry Upload-Length.")
    elif defer is not None:
        if defer != "1" or length is not None:
            raise BadRequest("Send either Upload-Length or 'Upload-Defer-Length: 1'.")
    elif length is None:
        raise BadRequest("Upload-Length (or 'Upload-Defer-Length: 1') is required.")
    metadata = parse_metadata(request.headers.get("Upload-Metadata"))
    with_body = request.headers.get("Content-Type") == OFFSET_CONTENT_TYPE
    checksum = _checksum(request) if with_body else None
    if with_body and request.content_length is not None:
        gateway.uploads.check_size(request.content_length)  # a body that cannot fit creates nothing
    upload = await gateway.uploads.create(
        principal, case_id, length=length, metadata=metadata, concat=concat, partial_ids=partial_ids
    )
    headers = _upload_headers(request, upload)
    headers["Location"] = upload_url(request, upload)
    if with_body and concat is not ConcatKind.FINAL:
        try:
            upload = await gateway.uploads.append(
                principal,
                case_id,
                upload.id,
                0,
                body_of(request),
                checksum=checksum,
                body_size=request.content_length,
            )
        except UploadTooLarge:
            # The file cannot fit whatever the client does next: the empty upload goes and the answer is 413.
            await gateway.uploads.terminate(principal, case_id, upload.id)
            raise
        except DomainError as exc:
            # creation-with-upload: the upload exists even if its first chunk failed; say where it stands.
            response = web.json_response({"code": exc.code, "message": exc.message}, status=201)
            response.headers.update(headers)
            response.headers["Upload-Offset"] = "0"
            return response
        except BodyInterrupted:
            upload = await gateway.uploads.get(principal, case_id, upload.id)
        headers = {**_upload_headers(request, upload), "Location": headers["Location"]}
        headers["Upload-Offset"] = str(upload.offset)
    return web.Response(status=201, headers=headers)


@routes.get("/api/v1/cases/{case_id}/uploads")
async def list_unfinished(request: web.Request) -> web.StreamResponse:
    """Unfinished uploads of the case, so a reloaded page can offer to resume them (in pages)."""
    principal = await authenticate(request)
    gateway = gateway_of(request)
    limit, cursor = page_params(request)
    page = await gateway.uploads.page_active(principal, request.match_info["case_id"], limit, cursor)
    return page_response(request, page, [_upload_json(request, u) for u in page.items], limit)


def _upload_json(request: web.Request, upload: Upload) -> dict[str, Any]:
    return {
        "id": upload.id,
        "url": upload_url(request, upload),
        "name": upload.name,
        "length": upload.length,
        "offset": upload.offset,
        "metadata": upload.metadata,
        "created_by": upload.created_by,
        "created_at": isoformat(upload.created_at),
        "expires_at": isoformat(upload.expires_at),
        "partial": upload.concat is ConcatKind.PARTIAL,
    }


@routes.head("/api/v1/cases/{case_id}/uploads/{upload_id}")
async def head(request: web.Request) -> web.StreamResponse:
    from eftgw.http import resumable

    if resumable.is_draft(request):
        return await resumable.offset(request)
    _check_version(request)
    principal = await authenticate(request)
    upload = await gateway_of(request).uploads.get(
        principal, request.match_info["case_id"], request.match_info["upload_id"]
    )
    headers = _upload_headers(request, upload)
    headers["Upload-Offset"] = str(upload.offset)
    if upload.length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(upload.length)
    if upload.metadata:
        headers["Upload-Metadata"] = format_metadata(upload.metadata)
    if upload.concat is ConcatKind.PARTIAL:
        headers["Upload-Concat"] = "partial"
    elif upload.concat is ConcatKind.FINAL:
        base = f"/api/v1/cases/{upload.case_id}/uploads/"
        headers["Upload-Concat"] = "final;" + " ".join(base + p for p in upload.partials)
    return web.Response(status=200, headers=headers)


@routes.patch("/api/v1/cases/{case_id}/uploads/{upload_id}")
async def patch(request: web.Request) -> web.StreamResponse:
    from eftgw.http import resumable

    if resumable.is_draft(request):
        return await resumable.append(request)
    _check_version(request)
    principal = await authenticate(request)
    if request.headers.get("Content-Type") != OFFSET_CONTENT_TYPE:
        raise UnsupportedMediaType()
    offset = _int_header(request, "Upload-Offset")
    if offset is None:
        raise BadRequest("Upload-Offset is required.")
    checksum = _checksum(request)
    upload = await gateway_of(request).uploads.append(
        principal,
        request.match_info["case_id"],
        request.match_info["upload_id"],
        offset,
        body_of(request),
        checksum=checksum,
        declared_length=_int_header(request, "Upload-Length"),
        body_size=request.content_length,
    )
    headers = _upload_headers(request, upload)
    headers["Upload-Offset"] = str(upload.offset)
    return web.Response(status=204, headers=headers)


@routes.delete("/api/v1/cases/{case_id}/uploads/{upload_id}")
async def terminate(request: web.Request) -> web.StreamResponse:
    from eftgw.http import resumable

    if resumable.is_draft(request):
        return await resumable.cancel(request)
    _check_version(request)
    principal = await authenticate(request)
    await gateway_of(request).uploads.terminate(
        principal, request.match_info["case_id"], request.match_info["upload_id"]
    )
    return web.Response(status=204, headers=_headers(request))
