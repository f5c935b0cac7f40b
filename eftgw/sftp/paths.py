"""Client paths, normalised once into names in the case area.

The case area is one flat directory, shown to the client as ``/``. Every path a client sends goes through
:func:`case_name` exactly once, before anything else looks at it: it is decoded as UTF-8, refused if it holds
NUL or control characters, resolved against ``/`` (so ``..`` stops at the root and an absolute path is read
inside the case area, never on the host), and reduced to either the root or one file name. Names are kept in
NFC, as :func:`eftgw.names.sanitize_name` stores them, so a name a client sends in NFD finds its file.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata

from asyncssh import SFTPInvalidFilename, SFTPNoSuchFile

from eftgw.names import MAX_NAME_BYTES

ROOT = ""
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
TEMPORARY_SUFFIXES = (".filepart", ".partial")


def case_name(raw: bytes) -> str:
    """The case-area name a client path means: ``""`` for the root, otherwise one file name.

    Raises :class:`SFTPInvalidFilename` for undecodable names or names with NUL, control characters or
    backslashes, and :class:`SFTPNoSuchFile` for paths below a file (the area has no folders).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SFTPInvalidFilename("File names must be UTF-8.") from None
    if _CONTROL.search(text):
        raise SFTPInvalidFilename("File names must not contain NUL, control characters or backslashes.")
    normal = posixpath.normpath("/" + text).lstrip("/")
    if normal in ("", "."):
        return ROOT
    if "/" in normal:
        raise SFTPNoSuchFile("This case area has no folders: files live directly in /.")
    name = unicodedata.normalize("NFC", normal)
    if len(name.encode("utf-8")) > MAX_NAME_BYTES or name != name.strip():
        raise SFTPInvalidFilename(
            f"File names are at most {MAX_NAME_BYTES} bytes, without leading or trailing spaces."
        )
    return name


def display_path(name: str) -> bytes:
    """The absolute path a client sees for a case-area name (``/`` for the root)."""
    return ("/" + name).encode("utf-8")


def is_temporary(name: str) -> bool:
    """Whether a name is a client's temporary upload name (WinSCP ``.filepart``, rclone ``.partial``).

    An upload under such a name is not finished by closing it; renaming it to a final name finishes it.
    """
    return name.lower().endswith(TEMPORARY_SUFFIXES)
