"""Identifiers: unguessable upload and session ids, opaque file ids, and validation of case ids."""

from __future__ import annotations

import hashlib
import re
import secrets

from eftgw.errors import BadRequest

CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def new_upload_id() -> str:
    """128 bits of randomness, URL-safe: an upload URL is a capability and must not be guessable."""
    return secrets.token_urlsafe(16)


def new_file_id() -> str:
    return "f_" + secrets.token_hex(12)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_hash(value: str) -> str:
    """What is stored for a bearer secret (session cookie): its SHA-256, so a database leak is no login."""
    return hashlib.sha256(value.encode()).hexdigest()


def check_case_id(case_id: str) -> str:
    """Case ids come from the case system; they become storage key segments, so they are restricted."""
    if not CASE_ID.match(case_id) or case_id in (".", ".."):
        raise BadRequest("Case ids are 1-64 characters: letters, digits, '.', '_' and '-'.")
    return case_id
