"""The IETF resumable uploads draft (draft-ietf-httpbis-resumable-upload) beside tus 1.0, on the same engine.

A request that carries ``Upload-Draft-Interop-Version`` is dispatched here by :mod:`eftgw.http.tus`; the
URLs are the tus ones: creation is ``POST /api/v1/cases/{case_id}/uploads``, and the upload resource is the
``Location`` it returns, where ``HEAD`` retrieves the offset, ``PATCH`` appends and ``DELETE`` cancels. The
same upload can be continued with either protocol: both call :class:`~eftgw.uploads.UploadService`, so
authentication, case isolation, durability (an ``Upload-Offset`` is only sent once fsynced) and the whole-file
SHA-256 are the same.

Interop versions: 8 (drafts -09 onwards, the current one), 7 (drafts -06 to -08), 6 (drafts -04 and -05,
tus-js-client's ``protocol: 'ietf-draft-05'``) and 5 (draft -03, tus-js-client's ``'ietf-draft-03'``). They
differ here only in that versions 6 and later require ``Content-Type: application/partial-upload`` on appends.

Completeness: a request with ``Upload-Complete: ?1`` whose content was fully received completes the upload
(its length is then what was received); an upload whose known length is reached completes as well (tus's rule,
which the engine applies to every transport). ``Content-Digest`` (RFC 9530, ``sha-256`` or ``sha-512``)
checks one request's content: on a mismatch nothing of it is kept. A completed upload's responses carry its
``Repr-Digest`` (the whole-file SHA-256).

Interim ``104 (Upload Resumption Supported)``: aiohttp has no API for informational responses except its own
``100 Continue``, which it writes as raw bytes on ``request.writer`` before the final response; the creation
handler announces ``Location`` and ``Upload-Limit`` the same way, on HTTP/1.1 only. Progress 104s during a
body are not sent: the engine makes an offset durable once per request, and an ``Upload-Offset`` is a promise.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
from collections.abc import Awaitable, Callable
from email.message import Message
from typing import Any

from aiohttp import HttpVersion11, web

from eftgw.errors import BadRequest, BodyInterrupted, ChecksumMismatch, DomainError, OffsetMismatch
from eftgw.hashing import ChunkChecksum
from eftgw.http.headers import parse_integer
from eftgw.http.keys import gateway_of
from eftgw.http.session import authenticate
from eftgw.http.tus import body_of, parse_metadata, upload_url
from eftgw.model import Principal, Upload, UploadState

INTEROP_HEADER = "Upload-Draft-Interop-Version"
INTEROP_VERSIONS = (5, 6, 7, 8)
PARTIAL_UPLOAD = "application/partial-upload"
PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
# Content-Digest algorithms (RFC 9530 names) the engine checks, strongest first.
CONTENT_DIGESTS = {"sha-512": "sha512", "sha-256": "sha256"}


class InteropVersionUnsupported(DomainError):
    code = "interop_version_unsupported"
    status = 412
    default_message = (
        "This server speaks tus 1.0.0 and the resumable upload draft with Upload-Draft-Interop-Version "
        + ", ".join(str(v) for v in INTEROP_VERSIONS)
        + "."
    )


class PartialUploadRequired(DomainError):
    code = "unsupported_media_type"
    status = 415
    default_message = f"Appends must be sent as '{PARTIAL_UPLOAD}'."


def is_draft(request: web.Request) -> bool:
    """Whether the request speaks the draft (by its ``Upload-Draft-Interop-Version`` header)."""
    return INTEROP_HEADER in request.headers


def interop_version(request: web.Request) -> int:
    raw = request.headers.get(INTEROP_HEADER, "").strip()
    if not raw.isascii() or not raw.isdigit() or int(raw) not in INTEROP_VERSIONS:
        raise InteropVersionUnsupported()
    return int(raw)


def _boolean(request: web.Request, name: str) -> bool | None:
    """A Structured Field Boolean (``?1``/``?0``, parameters ignored); anything else counts as absent."""
    raw = request.headers.get(name)
    if raw is None:
        return None
    value = raw.split(";", 1)[0].strip()
    return {"?1": True, "?0": False}.get(value)


def _upload_complete(request: web.Request) -> bool:
    value = _boolean(request, "Upload-Complete")
    if value is None:
        raise BadRequest("Upload-Complete must be '?0' or '?1'.")
    return value


def content_digest(request: web.Request) -> ChunkChecksum | None:
    """The strongest ``Content-Digest`` member the engine can check; other algorithms are ignored."""
    raw = request.headers.get("Content-Digest")
    if raw is None:
        return None
    members: dict[str, str] = {}
    for member in raw.split(","):
        key, sep, item = member.strip().partition("=")
        if sep:
            members[key.strip().lower()] = item.split(";", 1)[0].strip()
    for name, algorithm in CONTENT_DIGESTS.items():
        value = members.get(name)
        if value is None:
            continue
        if len(value) < 2 or value[0] != ":" or value[-1] != ":":
            raise BadRequest(f"Content-Digest {name} must be a byte sequence (':base64:').")
        try:
            expected = base64.b64decode(value[1:-1], validate=True)
        except binascii.Error as exc:
            raise BadRequest(f"Content-Digest {name} is not valid base64.") from exc
        return ChunkChecksum(algorithm, expected)
    return None


def _length_indicated(request: web.Request, offset: int, complete: bool) -> int | None:
    """The length the request indicates (``Upload-Length``, or offset plus content with ``?1``)."""
    declared = parse_integer("Upload-Length", request.headers.get("Upload-Length"))
    if complete and request.content_length is not None:
        implied = offset + request.content_length
        if declared is not None and declared != implied:
            raise _problem_inconsistent_length()
        return implied
    return declared


class Problem(Exception):
    """An answer in the draft's own terms (RFC 9457 problem details), returned as it is."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _problem(status: int, kind: str, title: str, headers: dict[str, str], **members: Any) -> Problem:
    body = {"type": PROBLEM_BASE + kind, "title": title, **members}
    return Problem(
        web.Response(status=status, text=json.dumps(body), content_type=PROBLEM_JSON, headers=headers)
    )


def _problem_inconsistent_length() -> Problem:
    return _problem(
        400, "inconsistent-upload-length", "inconsistent length values for upload", {"Upload-Complete": "?0"}
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answers_problems(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as problem:
            return problem.response

    return wrapper


def limits(request: web.Request, upload: Upload | None = None) -> str:
    """The ``Upload-Limit`` dictionary: no minimum, the gateway's maximum size, and the upload's lifetime."""
    settings = gateway_of(request).settings
    parts = ["min-size=0"]
    if settings.max_upload_size is not None:
        parts.append(f"max-size={settings.max_upload_size}")
    if upload is not None and upload.state is UploadState.ACTIVE:
        remaining = (upload.expires_at - gateway_of(request).clock.now()).total_seconds()
        parts.append(f"max-age={max(0, math.floor(remaining))}")
    return ", ".join(parts)


async def _state_headers(request: web.Request, upload: Upload) -> dict[str, str]:
    version = request.headers[INTEROP_HEADER].strip()
    complete = upload.state is UploadState.FINISHED
    headers = {
        INTEROP_HEADER: version,
        "Upload-Offset": str(upload.offset),
        "Upload-Complete": "?1" if complete else "?0",
        "Upload-Limit": limits(request, upload),
        "Cache-Control": "no-store",
    }
    if upload.length is not None:
        headers["Upload-Length"] = str(upload.length)
    if complete:
        record = await gateway_of(request).repo.get_file(upload.case_id, upload.file_id)
        if record is not None:
            digest = base64.b64encode(bytes.fromhex(record.sha256)).decode()
            headers["Repr-Digest"] = f"sha-256=:{digest}:"
    return headers


def _metadata(request: web.Request) -> dict[str, str]:
    """tus ``Upload-Metadata`` (tus-js-client sends it), else ``Content-Disposition``/``Content-Type``."""
    metadata = parse_metadata(request.headers.get("Upload-Metadata"))
    disposition = request.headers.get("Content-Disposition")
    if disposition and "filename" not in metadata:
        name = _disposition_filename(disposition)
        if name:
            metadata["filename"] = name
    content_type = request.headers.get("Content-Type")
    if content_type and "filetype" not in metadata and content_type != PARTIAL_UPLOAD:
        metadata["filetype"] = content_type
    return metadata


def _disposition_filename(header: str) -> str | None:
    message = Message()
    message["Content-Disposition"] = header
    name: object = message.get_filename()
    return name if isinstance(name, str) else None


async def _send_interim(request: web.Request, headers: dict[str, str]) -> None:
    """A raw ``104 (Upload Resumption Supported)`` before the final response, as aiohttp writes its 100."""
    if request.version != HttpVersion11:
        return
    lines = ["HTTP/1.1 104 Upload Resumption Supported", *(f"{k}: {v}" for k, v in headers.items())]
    await request.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    request.writer.output_size = 0


def _has_content(request: web.Request) -> bool:
    return request.content_length != 0 and request.can_read_body


async def _append(
    request: web.Request,
    principal: Principal,
    upload: Upload,
    offset: int,
    complete: bool,
    length: int | None,
) -> Upload:
    """Append the body; with ``Upload-Complete: ?1`` and all of it received, complete the upload."""
    gateway = gateway_of(request)
    checksum = content_digest(request)
    try:
        upload = await gateway.uploads.append(
            principal,
            upload.case_id,
            upload.id,
            offset,
            body_of(request),
            checksum=checksum,
            declared_length=length,
        )
    except ChecksumMismatch as exc:
        # Nothing of this content was kept: a 400 (tus's 460 is tus's own) that says where the upload stands.
        current = await gateway.uploads.get(principal, upload.case_id, upload.id)
        response = web.json_response({"code": exc.code, "message": exc.message}, status=400)
        response.headers.update({"Upload-Offset": str(current.offset), "Upload-Complete": "?0"})
        raise Problem(response) from exc
    if complete and upload.state is UploadState.ACTIVE:
        upload = await gateway.uploads.finish(principal, upload.case_id, upload.id)
    return upload


@_answers_problems
async def create(request: web.Request) -> web.StreamResponse:
    """Upload creation: ``POST`` with ``Upload-Complete``, optional ``Upload-Length`` and content."""
    interop_version(request)
    principal = await authenticate(request)
    gateway = gateway_of(request)
    case_id = request.match_info["case_id"]
    complete = _upload_complete(request)
    length = _length_indicated(request, 0, complete)
    content_digest(request)  # a malformed digest is refused before anything is created
    upload = await gateway.uploads.create(principal, case_id, length=length, metadata=_metadata(request))
    location = upload_url(request, upload)
    version = request.headers[INTEROP_HEADER].strip()
    await _send_interim(
        request, {INTEROP_HEADER: version, "Location": location, "Upload-Limit": limits(request, upload)}
    )
    if _has_content(request) or (complete and upload.state is UploadState.ACTIVE):
        try:
            upload = await _append(request, principal, upload, 0, complete, None)
        except BodyInterrupted:
            upload = await gateway.uploads.get(principal, case_id, upload.id)
        except Problem as problem:
            problem.response.headers["Location"] = location
            raise
        except DomainError as exc:
            # The upload exists even if its first content failed: say where it is and where it stands.
            current = await gateway.uploads.get(principal, case_id, upload.id)
            response = web.json_response({"code": exc.code, "message": exc.message}, status=exc.status)
            response.headers.update(await _state_headers(request, current))
            response.headers["Location"] = location
            return response
    headers = await _state_headers(request, upload)
    headers["Location"] = location
    return web.Response(status=201, headers=headers)


@_answers_problems
async def offset(request: web.Request) -> web.StreamResponse:
    """Offset retrieval: ``HEAD`` on the upload resource."""
    interop_version(request)
    principal = await authenticate(request)
    upload = await gateway_of(request).uploads.get(
        principal, request.match_info["case_id"], request.match_info["upload_id"]
    )
    return web.Response(status=204, headers=await _state_headers(request, upload))


@_answers_problems
async def append(request: web.Request) -> web.StreamResponse:
    """Upload append: ``PATCH`` with ``Upload-Offset``, ``Upload-Complete`` and the next bytes."""
    version = interop_version(request)
    principal = await authenticate(request)
    if version >= 6 and request.headers.get("Content-Type", "").split(";")[0].strip() != PARTIAL_UPLOAD:
        raise PartialUploadRequired()
    provided = parse_integer("Upload-Offset", request.headers.get("Upload-Offset"))
    if provided is None:
        raise BadRequest("Upload-Offset is required.")
    complete = _upload_complete(request)
    gateway = gateway_of(request)
    case_id, upload_id = request.match_info["case_id"], request.match_info["upload_id"]
    upload = await gateway.uploads.get(principal, case_id, upload_id)
    length = _length_indicated(request, provided, complete)
    if length is not None and upload.length is not None and length != upload.length:
        raise _problem_inconsistent_length()
    try:
        upload = await _append(request, principal, upload, provided, complete, length)
    except OffsetMismatch as exc:
        current = await gateway.uploads.get(principal, case_id, upload_id)
        raise _problem(
            409,
            "mismatching-upload-offset",
            "offset from request does not match offset of resource",
            {"Upload-Offset": str(current.offset), "Upload-Complete": "?0"},
            **{"expected-offset": current.offset, "provided-offset": provided},
        ) from exc
    return web.Response(status=204, headers=await _state_headers(request, upload))


async def cancel(request: web.Request) -> web.StreamResponse:
    """Upload cancellation: ``DELETE`` on the upload resource."""
    interop_version(request)
    principal = await authenticate(request)
    await gateway_of(request).uploads.terminate(
        principal, request.match_info["case_id"], request.match_info["upload_id"]
    )
    return web.Response(status=204, headers={"Cache-Control": "no-store"})
