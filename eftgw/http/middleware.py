"""Cross-cutting HTTP behaviour: error translation, security headers, CORS, access log without secrets."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from eftgw import logs
from eftgw.errors import BodyInterrupted, DomainError, StorageUnavailable
from eftgw.http.keys import gateway_of

log = logging.getLogger("eftgw.http")
access_log = logging.getLogger("eftgw.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TUS_VERSION = "1.0.0"
TUS_HEADERS = [
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Expires",
    "Upload-Checksum",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
]
# The IETF resumable uploads draft's fields (eftgw.http.resumable), for browser clients speaking it.
DRAFT_REQUEST_HEADERS = [
    "Upload-Draft-Interop-Version",
    "Upload-Complete",
    "Content-Digest",
    "Content-Disposition",
]
DRAFT_RESPONSE_HEADERS = ["Upload-Draft-Interop-Version", "Upload-Complete", "Upload-Limit"]
ALLOWED_HEADERS = [
    *TUS_HEADERS,
    *DRAFT_REQUEST_HEADERS,
    "Authorization",
    "Content-Type",
    "X-CSRF-Token",
    "X-Requested-With",
    "Range",
]
EXPOSED_HEADERS = [
    *TUS_HEADERS,
    *DRAFT_RESPONSE_HEADERS,
    "Location",
    "Repr-Digest",
    "Content-Disposition",
    "Content-Range",
    "ETag",
    "Link",
    "Retry-After",
]

# 'wasm-unsafe-eval' lets the page's own scripts compile WebAssembly (the web client's SHA-256, hash-wasm); it
# allows no eval of JavaScript and no script from elsewhere.
CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)


# nginx's status for "the client closed the connection before the answer was complete": what the access
# log records for an aborted download (nothing is sent: there is no one to send it to).
CLIENT_CLOSED_REQUEST = 499


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def error_response(exc: DomainError, request: web.Request) -> web.Response:
    response = web.json_response({"code": exc.code, "message": exc.message}, status=exc.status)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    if request.path.startswith("/api/v1/cases/") and "/uploads" in request.path:
        response.headers["Tus-Resumable"] = TUS_VERSION
        if isinstance(exc, StorageUnavailable) and exc.offset is not None:
            response.headers["Upload-Offset"] = str(exc.offset)  # the durable offset: resume from here
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Domain errors to JSON; anything unexpected to a 500 without internals (logged with its trace)."""
    try:
        return await handler(request)
    except DomainError as exc:
        return error_response(exc, request)
    except BodyInterrupted:
        log.info("client went away during %s %s; what arrived was kept", request.method, request.path)
        return web.json_response(
            {"code": "body_interrupted", "message": "The request body was cut off."}, status=400
        )
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            body = {"code": exc.reason.lower().replace(" ", "_"), "message": exc.reason + "."}
            return web.json_response(
                body,
                status=exc.status,
                headers={k: v for k, v in exc.headers.items() if k.lower() in ("allow",)},
            )
        raise
    except Exception as exc:
        if isinstance(exc, ConnectionError) and client_gone(request):
            # The client hung up mid-answer (a killed curl, aria2c closing a segment): not our error.
            what = "download" if request.method in ("GET", "HEAD") else "request"
            log.info("client aborted %s: %s %s", what, request.method, request.path)
            return web.Response(status=CLIENT_CLOSED_REQUEST)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(
            {"code": "internal_error", "message": "Something went wrong on the gateway; please try again."},
            status=500,
        )


@web.middleware
async def log_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every log line of the request carries its id, case, upload and client address (JSON logs); the
    response names the id in ``X-Request-Id`` so a customer's report can be matched with the logs."""
    request_id = secrets.token_hex(8)
    match = request.match_info
    with logs.bind(
        request_id=request_id, case=match.get("case_id"), upload=match.get("upload_id"), client=request.remote
    ):
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers["X-Request-Id"] = request_id
            raise
        response.headers["X-Request-Id"] = request_id
        return response


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    if request.method == "PATCH":  # an upload's PATCH may last hours: say which node took it when it starts
        access_log.info("%s %s %s started", request.remote, request.method, request.path)
    response = await handler(request)
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if request.path.startswith("/api/"):
        headers.setdefault("Cache-Control", "no-store")
    if gateway_of(request).settings.tls == "on" or request.secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    # Access log: method and path only; never query strings, bodies or headers (tokens live there).
    access_log.info(
        "%s %s %s %d %.3fs",
        request.remote,
        request.method,
        request.path,
        response.status,
        time.monotonic() - started,
    )
    return response


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for the configured origins (API clients with bearer tokens); cookies stay same-origin only."""
    origin = request.headers.get("Origin")
    allowed = origin is not None and origin in gateway_of(request).settings.cors_origins
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if not allowed:
            return web.Response(status=403, text="origin not allowed")
        response: web.StreamResponse = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, PATCH, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = ", ".join(ALLOWED_HEADERS)
        response.headers["Access-Control-Max-Age"] = "600"
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        if not allowed:
            if isinstance(response, web.HTTPException):
                raise response
            return response
    response.headers["Access-Control-Allow-Origin"] = origin or ""
    response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
    response.headers["Vary"] = "Origin"
    if isinstance(response, web.HTTPException):
        raise response
    return response
