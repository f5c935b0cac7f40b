"""File names are user input: they are kept as metadata only, after sanitising, and never reach a path."""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_BYTES = 255
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def sanitize_name(raw: str | None) -> str:
    """A display name safe to store and to put in a ``Content-Disposition``: no path, no control characters.

    Only the last path component is kept (both ``/`` and ``\\`` separate), control characters are dropped,
    the result is NFC-normalised and cut to 255 UTF-8 bytes; what remains empty becomes ``unnamed``.
    """
    name = (raw or "").replace("\\", "/").split("/")[-1]
    name = unicodedata.normalize("NFC", _UNSAFE.sub("", name)).strip()
    if name in ("", ".", ".."):
        return "unnamed"
    encoded = name.encode("utf-8")
    if len(encoded) > MAX_NAME_BYTES:
        name = encoded[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")
    return name


_MIME = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}$")


def sanitize_content_type(raw: str | None) -> str:
    """A declared media type, if it is a plain ``type/subtype``; otherwise ``application/octet-stream``."""
    if raw and _MIME.match(raw.strip()):
        return raw.strip().lower()
    return "application/octet-stream"
