"""Strict parsers for the numeric HTTP headers the gateway reads: integer headers and single byte ranges.

Integer headers (``Upload-Length``, ``Upload-Offset``) are ASCII digits only (``str.isdigit`` would take
``²`` or Arabic-Indic digits), at most 19 of them, and at most :data:`MAX_INTEGER` (2**63 - 1, the largest
size the metadata database stores). Anything else is a 400 that names the header.

``Range`` follows RFC 9110 section 14: a malformed header, or several ranges, is ignored (the whole
representation is sent); a syntactically valid range that selects nothing, including any range of an empty
file or a last position before the first, is unsatisfiable (416 with ``Content-Range: bytes */<size>``).
Positions are never converted from more than 19 digits: a longer position is simply larger than any file.
"""

from __future__ import annotations

import re

from eftgw.errors import BadRequest, RangeNotSatisfiable

MAX_INTEGER = 2**63 - 1
MAX_DIGITS = len(str(MAX_INTEGER))

_DIGITS = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}", re.ASCII)
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.ASCII | re.IGNORECASE)


def parse_integer(name: str, raw: str | None, maximum: int = MAX_INTEGER) -> int | None:
    """The value of integer header ``name`` (``None`` when absent).

    :raises BadRequest: unless ``raw`` is 1 to 19 ASCII digits with a value of at most ``maximum``.
    """
    if raw is None:
        return None
    value = raw.strip(" \t")
    if not _DIGITS.fullmatch(value) or int(value) > maximum:
        raise BadRequest(f"{name} must be a whole number of bytes from 0 to {maximum}.")
    return int(value)


def _position(digits: str) -> int:
    """A range position; anything longer than 19 digits counts as larger than any stored file."""
    return int(digits) if len(digits) <= MAX_DIGITS else MAX_INTEGER + 1


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single byte range of a ``size``-byte representation as ``(start, end_exclusive)``.

    Returns ``None`` (send the whole file) without a header, for a malformed one, or for several ranges.

    :raises RangeNotSatisfiable: for a valid range that selects no byte of the representation.
    """
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip(" \t"))
    if not match:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable()
        return max(0, size - suffix), size
    start = _position(first)
    if start >= size or (last != "" and _position(last) < start):
        raise RangeNotSatisfiable()
    end = size if last == "" else min(_position(last) + 1, size)
    return start, end
