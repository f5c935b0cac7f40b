"""Keyset pagination of lists: a page of at most ``limit`` items in a stable order, and an opaque cursor.

Every list is ordered by a time and an id (``(uploaded_at, id)`` for files, ``(created_at, id)`` for
uploads), which never changes for an item; the cursor encodes the last item's pair, and the next page is what
comes strictly after it. Items added or removed between pages neither repeat nor shift the others.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from eftgw.errors import BadRequest

T = TypeVar("T")

DEFAULT_LIMIT = 500
MAX_LIMIT = 1000

Position = tuple[dt.datetime, str]


@dataclass
class Page(Generic[T]):
    """One page of a list; ``next_cursor`` is ``None`` on the last page."""

    items: list[T]
    next_cursor: str | None


def page_of(items: list[T], limit: int, position: Callable[[T], Position]) -> Page[T]:
    """The page from ``limit + 1`` items read in order: the extra one only says that another page exists."""
    if len(items) <= limit:
        return Page(items, None)
    kept = items[:limit]
    return Page(kept, encode_cursor(*position(kept[-1])))


def encode_cursor(at: dt.datetime, item_id: str) -> str:
    raw = f"{at.astimezone(dt.UTC).isoformat()}|{item_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor stands for; :class:`BadRequest` for anything this gateway did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, item_id = raw.split("|", 1)
        at = dt.datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("The cursor is not one this gateway gave out; start from the first page.") from exc
    if at.tzinfo is None or not item_id:
        raise BadRequest("The cursor is not one this gateway gave out; start from the first page.")
    return at, item_id


def parse_limit(raw: str | None) -> int:
    """The ``limit`` query parameter: ``DEFAULT_LIMIT`` when absent, 1 to ``MAX_LIMIT``."""
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}.")
    return int(raw)
