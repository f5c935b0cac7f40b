"""The OpenAPI 3.1 description of the HTTP API, served at ``/api/v1/openapi.json``.

``tests/http/test_openapi.py`` checks that every route of the application is described here and nothing else.
"""

from __future__ import annotations

from typing import Any

from eftgw import __version__
from eftgw.events import EVENT_TYPES
from eftgw.pagination import DEFAULT_LIMIT, MAX_LIMIT

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


ERROR = _json(_ref("Error"), "An error with a stable code and a sentence for people")
STORAGE_FULL = _json(
    _ref("Error"),
    "storage_full: the gateway's storage is full. Retry-After says when to try again; Upload-Offset (and the"
    " message) give the durable offset the upload is kept at. Nothing past it was kept.",
)
STORAGE_UNAVAILABLE = _json(
    _ref("Error"),
    "storage_unavailable: the storage failed or is unreachable; Retry-After and Upload-Offset as for 507.",
)
CASE_ID = {"name": "case_id", "in": "path", "required": True, "schema": {"type": "string"}}
FILE_ID = {"name": "file_id", "in": "path", "required": True, "schema": {"type": "string"}}
UPLOAD_ID = {"name": "upload_id", "in": "path", "required": True, "schema": {"type": "string"}}
LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "description": f"Items per page (default {DEFAULT_LIMIT})",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
}
CURSOR = {
    "name": "cursor",
    "in": "query",
    "required": False,
    "description": "Where the page starts: the opaque cursor of the previous page's Link rel=next",
    "schema": {"type": "string"},
}
PAGE_HEADERS = {
    "Link": {
        "description": 'URL of the next page as `<url>; rel="next"`; absent on the last page',
        "schema": {"type": "string"},
    },
    "Eftgw-Next-Cursor": {
        "description": "The cursor of the next page; absent on the last page",
        "schema": {"type": "string"},
    },
}
TOO_MANY = {
    "description": "A quota was reached (unfinished uploads of the case, or uploads started per minute); "
    "Retry-After says when to try again",
    "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
    "content": {JSON: {"schema": _ref("Error")}},
}
TUS = {
    "name": "Tus-Resumable",
    "in": "header",
    "required": False,
    "description": "Required by tus 1.0; draft requests send Upload-Draft-Interop-Version instead",
    "schema": {"const": "1.0.0"},
}
DRAFT = {
    "name": "Upload-Draft-Interop-Version",
    "in": "header",
    "required": False,
    "description": "Speak the IETF resumable uploads draft (draft-ietf-httpbis-resumable-upload), not tus:"
    " 8 (drafts -09 on), 7 (-06 to -08), 6 (-04/-05, tus-js-client 'ietf-draft-05'),"
    " 5 (-03, 'ietf-draft-03')",
    "schema": {"enum": ["5", "6", "7", "8"]},
}
UPLOAD_COMPLETE = {
    "name": "Upload-Complete",
    "in": "header",
    "required": False,
    "description": "Draft requests (required there): '?1' when this request's content ends the upload",
    "schema": {"enum": ["?0", "?1"]},
}
CONTENT_DIGEST = {
    "name": "Content-Digest",
    "in": "header",
    "required": False,
    "description": "Draft requests (RFC 9530): sha-256 or sha-512 of this request's content; on a"
    " mismatch none of it is kept (400)",
    "schema": {"type": "string"},
}
PROBLEM_TYPES = (
    "an RFC 9457 problem of the draft: mismatching-upload-offset (409, with expected-offset and"
    " provided-offset) or inconsistent-upload-length (400)"
)
PROBLEM = {
    "description": "Draft: " + PROBLEM_TYPES,
    "content": {"application/problem+json": {"schema": {"type": "object"}}},
}


def _op(
    summary: str, responses: dict[str, Any], *, params: list[Any] | None = None, **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, "responses": {**responses, "default": ERROR}}
    if params:
        out["parameters"] = params
    out.update(extra)
    return out


def document() -> dict[str, Any]:
    no_content = {"204": {"description": "Done"}}
    tus_head = {
        "200": {"description": "Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires headers"}
    }
    case_schema = _ref("Case")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "eftgw",
            "version": __version__,
            "description": "Resumable file transfer for support cases: tus 1.0.0 and the IETF resumable"
            " uploads draft, files, integration API.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)"},
                "session": {"type": "apiKey", "in": "cookie", "name": "__Host-eftgw_session"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                },
                "Event": {
                    "type": "object",
                    "required": ["id", "type", "timestamp", "region", "case_id", "data"],
                    "properties": {
                        "id": {"type": "string", "description": "Unique; the idempotency key"},
                        "type": {"enum": sorted(EVENT_TYPES)},
                        "timestamp": {"type": "string", "format": "date-time"},
                        "region": {"type": "string"},
                        "case_id": {"type": ["string", "null"]},
                        "data": {"type": "object", "description": "The type's fields (docs/events.md)"},
                    },
                },
                "EventPage": {
                    "type": "object",
                    "required": ["events", "next"],
                    "properties": {
                        "events": {"type": "array", "items": _ref("Event")},
                        "next": {"type": "string"},
                    },
                },
                "Case": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "state": {"enum": ["open", "closed"]},
                        "opened_at": {"type": "string", "format": "date-time"},
                        "closed_at": {"type": ["string", "null"], "format": "date-time"},
                        "purge_due_at": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
                "File": {
                    "type": "object",
                    "required": ["id", "name", "size", "sha256", "uploaded_at", "uploaded_by", "source"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "size": {"type": "integer"},
                        "sha256": {"type": "string"},
                        "xxh128": {"type": "string"},
                        "uploaded_at": {"type": "string", "format": "date-time"},
                        "uploaded_by": {"type": "string"},
                        "source": {"enum": ["customer", "engineer"]},
                        "via": {"enum": ["http", "sftp"]},
                        "content_type": {"type": "string"},
                        "purge_due_at": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
                "Upload": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "url": {"type": "string"},
                        "name": {"type": "string"},
                        "length": {"type": ["integer", "null"]},
                        "offset": {"type": "integer"},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        "created_by": {"type": "string"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "expires_at": {"type": "string", "format": "date-time"},
                        "partial": {"type": "boolean"},
                    },
                },
                "SftpAccount": {
                    "type": "object",
                    "properties": {
                        "username": {"type": "string"},
                        "password": {"type": "string"},
                        "host": {"type": "string"},
                        "port": {"type": "integer"},
                        "case_id": {"type": "string"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "expires_at": {"type": "string", "format": "date-time"},
                        "state": {"enum": ["active", "expired", "revoked"]},
                        "authorized_keys": {"type": "integer"},
                    },
                },
                "Session": {
                    "type": "object",
                    "properties": {
                        "user": {"type": "string"},
                        "role": {"enum": ["customer", "engineer"]},
                        "case_id": {"type": ["string", "null"]},
                        "csrf_token": {"type": "string"},
                        "expires_at": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": {
            "/healthz": {"get": _op("Liveness", {"200": {"description": "ok"}}, security=[])},
            "/api/v1/openapi.json": {
                "get": _op("This document", {"200": {"description": "OpenAPI"}}, security=[])
            },
            "/launch": {
                "post": _op(
                    "Exchange a launch token (form field 'token') for a session cookie",
                    {"303": {"description": "Redirect to the web client"}},
                    security=[],
                )
            },
            "/api/v1/session": {
                "post": _op(
                    "Exchange a launch token for a session", {"201": _json(_ref("Session"), "Session")}
                ),
                "get": _op("The current session", {"200": _json(_ref("Session"), "Session")}),
                "delete": _op("Sign out", no_content),
            },
            "/api/v1/cases/{case_id}": {
                "get": _op(
                    "The case: state and purge date", {"200": _json(case_schema, "Case")}, params=[CASE_ID]
                )
            },
            "/api/v1/cases/{case_id}/files": {
                "get": _op(
                    "The case's completed files, oldest first, in pages",
                    {
                        "200": {
                            **_json({"type": "array", "items": _ref("File")}, "Files"),
                            "headers": PAGE_HEADERS,
                        }
                    },
                    params=[CASE_ID, LIMIT, CURSOR],
                )
            },
            "/api/v1/cases/{case_id}/files/{file_id}": {
                "get": _op("One file", {"200": _json(_ref("File"), "File")}, params=[CASE_ID, FILE_ID]),
                "delete": _op("Delete a file", no_content, params=[CASE_ID, FILE_ID]),
            },
            "/api/v1/cases/{case_id}/files/{file_id}/content": {
                "get": _op(
                    "Download (single Range, If-Range; Repr-Digest carries the SHA-256)",
                    {
                        "200": {
                            "description": "The whole file, checked against its SHA-256 while it streams: if"
                            " the stored bytes do not match, the connection is cut before the end (a failed"
                            " transfer, never a clean one)"
                        },
                        "206": {"description": "The requested range"},
                        "416": ERROR,
                    },
                    params=[CASE_ID, FILE_ID],
                )
            },
            "/api/v1/cases/{case_id}/uploads": {
                "options": _op(
                    "tus discovery; Upload-Limit for the resumable uploads draft",
                    no_content,
                    params=[CASE_ID],
                    security=[],
                ),
                "post": _op(
                    "tus creation (creation-with-upload, defer-length, concatenation), or the draft's upload"
                    " creation (Upload-Draft-Interop-Version, Upload-Complete, optional Upload-Length,"
                    " Content-Digest and content; a 104 interim response announces Location and Upload-Limit"
                    " on HTTP/1.1)",
                    {
                        "201": {
                            "description": "Created; Location is the upload URL. Draft: Upload-Offset,"
                            " Upload-Complete, Upload-Limit, Repr-Digest once complete"
                        },
                        "400": PROBLEM,
                        "413": ERROR,
                        "429": TOO_MANY,
                        "503": STORAGE_UNAVAILABLE,
                        "507": STORAGE_FULL,
                    },
                    # The draft's fields are in the summary, not listed: a draft creation is answered with a
                    # 104 first, which clients built on Python's http.client (Schemathesis) cannot read.
                    params=[CASE_ID, TUS],
                ),
                "get": _op(
                    "Unfinished uploads of the case, oldest first, in pages",
                    {
                        "200": {
                            **_json({"type": "array", "items": _ref("Upload")}, "Uploads"),
                            "headers": PAGE_HEADERS,
                        }
                    },
                    params=[CASE_ID, LIMIT, CURSOR],
                ),
            },
            "/api/v1/cases/{case_id}/uploads/{upload_id}": {
                "options": _op("tus discovery", no_content, params=[CASE_ID, UPLOAD_ID], security=[]),
                "head": _op(
                    "tus offset, or the draft's offset retrieval",
                    {
                        **tus_head,
                        "204": {
                            "description": "Draft: Upload-Offset, Upload-Complete, Upload-Length (if known),"
                            " Upload-Limit"
                        },
                    },
                    params=[CASE_ID, UPLOAD_ID, TUS, DRAFT],
                ),
                "patch": _op(
                    "tus append (Upload-Offset, Upload-Checksum), or the draft's upload append"
                    " (application/partial-upload, Upload-Offset, Upload-Complete, Content-Digest)",
                    {
                        "204": {"description": "Upload-Offset is durable (draft: and Upload-Complete)"},
                        "400": PROBLEM,
                        "409": {**PROBLEM, "description": "tus: an error; draft: " + PROBLEM_TYPES},
                        "413": ERROR,
                        "460": ERROR,
                        "503": STORAGE_UNAVAILABLE,
                        "507": STORAGE_FULL,
                    },
                    params=[CASE_ID, UPLOAD_ID, TUS, DRAFT, UPLOAD_COMPLETE, CONTENT_DIGEST],
                ),
                "delete": _op(
                    "tus termination, or the draft's upload cancellation",
                    no_content,
                    params=[CASE_ID, UPLOAD_ID, TUS, DRAFT],
                ),
            },
            "/api/v1/integration/cases/{case_id}": {
                "get": _op("Case state (service)", {"200": _json(case_schema, "Case")}, params=[CASE_ID])
            },
            "/api/v1/integration/cases/{case_id}/open": {
                "post": _op("Open a case (service)", {"200": _json(case_schema, "Case")}, params=[CASE_ID])
            },
            "/api/v1/integration/cases/{case_id}/close": {
                "post": _op(
                    "Close a case, optionally at an earlier time (service)",
                    {"200": _json(case_schema, "Case")},
                    params=[CASE_ID],
                    requestBody={
                        "required": False,
                        "content": {JSON: {"schema": {"properties": {"closed_at": {"type": "string"}}}}},
                    },
                )
            },
            "/api/v1/integration/cases/{case_id}/reopen": {
                "post": _op("Reopen a case (service)", {"200": _json(case_schema, "Case")}, params=[CASE_ID])
            },
            "/api/v1/cases/{case_id}/sftp-account": {
                "get": _op(
                    "The case's active SFTP account, without its password (404 when none)",
                    {"200": _json(_ref("SftpAccount"), "Account")},
                    params=[CASE_ID],
                )
            },
            "/api/v1/integration/cases/{case_id}/sftp-accounts": {
                "post": _op(
                    "Create a 120-hour SFTP account for the case (service)",
                    {"201": _json(_ref("SftpAccount"), "Account with its password")},
                    params=[CASE_ID],
                    requestBody={
                        "required": False,
                        "content": {
                            JSON: {
                                "schema": {
                                    "properties": {
                                        "authorized_keys": {"type": "array", "items": {"type": "string"}}
                                    }
                                }
                            }
                        },
                    },
                ),
                "get": _op(
                    "The case's SFTP accounts, without passwords, oldest first, in pages (service)",
                    {
                        "200": {
                            **_json({"type": "array", "items": _ref("SftpAccount")}, "Accounts"),
                            "headers": PAGE_HEADERS,
                        }
                    },
                    params=[CASE_ID, LIMIT, CURSOR],
                ),
            },
            "/api/v1/integration/sftp-accounts/{username}": {
                "delete": _op(
                    "Revoke an SFTP account; live sessions are cut (service)",
                    {"200": _json(_ref("SftpAccount"), "Account")},
                    params=[
                        {"name": "username", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                )
            },
            "/api/v1/integration/events": {
                "get": _op(
                    "Integration events after a cursor, oldest first, in commit order (service); poll again"
                    " with `next`",
                    {
                        "200": {
                            **_json(_ref("EventPage"), "Events, and the cursor to poll with next"),
                            "headers": {
                                "Link": {
                                    "description": 'URL to poll next, as `<url>; rel="next"`',
                                    "schema": {"type": "string"},
                                }
                            },
                        },
                        "400": _json(_ref("Error"), "bad_request: a cursor this gateway did not give out"),
                        "403": _json(_ref("Error"), "forbidden: not the service token"),
                    },
                    params=[
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "description": "The opaque cursor `next` of the previous answer; omit it to"
                            " start at the oldest event kept",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "description": "Events per answer (default 100)",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        },
                    ],
                )
            },
            "/api/v1/integration/launch-tokens": {
                "post": _op(
                    "Mint a one-time launch token for the transfer pop-up (service)",
                    {"201": _json({"type": "object"}, "token, launch_url, expires_in")},
                    requestBody={
                        "required": True,
                        "content": {
                            JSON: {
                                "schema": {
                                    "required": ["user"],
                                    "properties": {
                                        "case_id": {"type": "string"},
                                        "user": {"type": "string"},
                                        "role": {"enum": ["customer", "engineer"]},
                                        "ttl": {"type": "integer"},
                                    },
                                }
                            }
                        },
                    },
                )
            },
        },
    }
