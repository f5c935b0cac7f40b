"""Integration events: what the gateway tells the case system, through a durable outbox.

An :class:`Event` is minted once, by the service that makes a change, and is stored in the *same database
transaction* as that change (the repository method that makes the change takes the events to record with it).
Its ``id`` never changes afterwards: it is the idempotency key a receiver deduplicates on, for webhooks and
for the pull API alike. The store gives each stored event a ``seq``: a position in the outbox that is strictly
increasing in commit order, so a reader that has seen ``seq = n`` never later finds an event with a smaller
``seq`` (the pull API's cursor depends on this).

Delivery state (attempts, next attempt, delivered or dead) lives beside the event in the outbox and is
described by :class:`Delivery`. Events of one case are delivered in ``seq`` order: a later event of a case is
not sent while an earlier one of that case is still undelivered and not dead.

The event types and the fields of each one's ``data`` are listed in :data:`EVENT_TYPES`; ``docs/events.md`` is
the receiver's reference.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eftgw.clock import Clock
from eftgw.model import Principal, Via

#: Every event type, with the keys its ``data`` carries. Lifecycle events of cases carry counts and bytes,
#: never file names.
EVENT_TYPES: Mapping[str, tuple[str, ...]] = {
    "file.finished": ("file_id", "name", "size", "sha256", "uploader", "role", "via", "client"),
    "file.downloaded": ("file_id", "name", "size", "by", "role", "via", "client"),
    "file.deleted": ("file_id", "name", "size", "by", "role", "reason"),
    "upload.expired": ("upload_id", "name", "offset", "length"),
    "case.closed": ("files", "bytes"),
    "case.reopened": ("files", "bytes"),
    "case.purged": ("files", "bytes"),
    "sftp_account.created": ("username", "expires_at", "by"),
    "sftp_account.revoked": ("username", "by"),
    "sftp_account.expired": ("username", "expired_at"),
}


def transport_of(principal: Principal) -> str:
    """``sftp`` for a principal that came over SFTP, ``http`` for every other (the ``via`` of events)."""
    return "sftp" if principal.via is Via.SFTP else "http"


def new_event_id() -> str:
    """``evt_`` and 26 URL-safe random characters: unique without coordination between nodes."""
    return "evt_" + secrets.token_hex(13)


@dataclass(frozen=True)
class Event:
    """One integration event. ``seq`` is ``None`` until the outbox has stored it."""

    id: str
    type: str
    at: dt.datetime
    region: str
    case_id: str | None
    data: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The event as receivers see it, in a webhook body and in the pull API."""
        return {
            "id": self.id,
            "type": self.type,
            "timestamp": self.at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "region": self.region,
            "case_id": self.case_id,
            "data": self.data,
        }


@dataclass(frozen=True)
class Delivery:
    """The webhook delivery state of one stored event."""

    event: Event
    attempts: int = 0
    next_attempt_at: dt.datetime | None = None
    delivered_at: dt.datetime | None = None
    dead_at: dt.datetime | None = None
    last_status: int | None = None
    last_error: str | None = None

    @property
    def state(self) -> str:
        """``delivered``, ``dead`` or ``pending``."""
        if self.delivered_at is not None:
            return "delivered"
        if self.dead_at is not None:
            return "dead"
        return "pending"


class EventFactory:
    """Mints events for the services: a fresh id, the clock's time and this gateway's region."""

    def __init__(self, region: str, clock: Clock) -> None:
        self.region = region
        self.clock = clock

    def make(self, type: str, case_id: str | None, **data: Any) -> Event:
        expected = EVENT_TYPES.get(type)
        if expected is None:
            raise ValueError(f"unknown event type {type!r}")
        missing = [key for key in expected if key not in data]
        if missing:
            raise ValueError(f"event {type} lacks {', '.join(missing)}")
        return Event(new_event_id(), type, self.clock.now(), self.region, case_id, dict(data))
