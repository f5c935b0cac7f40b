"""The domain: cases, files, uploads in progress, principals and audit events (plain data, no I/O)."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any


class Role(enum.StrEnum):
    CUSTOMER = "customer"
    ENGINEER = "engineer"
    SERVICE = "service"


class CaseState(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    PURGING = "purging"  # retention is removing its data; the row goes when that is done


class UploadState(enum.StrEnum):
    ACTIVE = "active"
    FINISHED = "finished"
    TERMINATED = "terminated"


class ConcatKind(enum.StrEnum):
    NONE = "none"
    PARTIAL = "partial"
    FINAL = "final"


class Via(enum.StrEnum):
    """How a principal reached the gateway (recorded in audit events)."""

    TOKEN = "token"  # noqa: S105 - an API bearer token (a name, not a secret)
    SESSION = "session"  # a browser session (after a launch)
    LAUNCH = "launch"  # a launch attempt that did not become a session
    SFTP = "sftp"
    CLI = "cli"  # an admin command
    SYSTEM = "system"  # the gateway itself (retention, sweeps); only :class:`SystemPrincipal` has it


class Transport(enum.StrEnum):
    """The transport an upload (and the file it became) came over."""

    HTTP = "http"
    SFTP = "sftp"


@dataclass(frozen=True)
class Principal:
    """Who is acting: a user with a role, bound to one case unless an engineer or service.

    Access to a case follows from the role alone; nothing a request carries (no string, no flag) widens it.
    The gateway's own jobs act as a :class:`SystemPrincipal`, a distinct type the type checker follows.
    """

    user: str
    role: Role
    case_id: str | None = None
    via: Via = Via.TOKEN
    remote: str | None = None
    session_id: str | None = None

    def may_access_case(self, case_id: str) -> bool:
        if self.role is Role.ENGINEER:
            return True
        if self.role is Role.CUSTOMER:
            return self.case_id == case_id
        return False

    @property
    def source(self) -> str:
        """Who a file uploaded by this principal is from: ``customer`` or ``engineer``."""
        return "engineer" if self.role is Role.ENGINEER else "customer"


@dataclass(frozen=True)
class SystemPrincipal(Principal):
    """The gateway itself (retention, expiry sweeps): may reach every case.

    Only code that constructs one gets this power; no token, session or SFTP login can produce it, and the
    operations reserved to it (e.g. :meth:`FileService.purge`) take this type, not a :class:`Principal`.
    """

    role: Role = Role.SERVICE
    via: Via = Via.SYSTEM

    def may_access_case(self, case_id: str) -> bool:
        return True


SYSTEM = SystemPrincipal(user="system")


@dataclass
class Case:
    id: str
    state: CaseState
    opened_at: dt.datetime
    closed_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    def purge_due_at(self, retention: dt.timedelta) -> dt.datetime | None:
        if self.state is not CaseState.OPEN and self.closed_at is not None:
            return self.closed_at + retention
        return None


@dataclass
class FileRecord:
    id: str
    case_id: str
    name: str
    size: int
    sha256: str
    xxh128: str
    object_key: str
    uploaded_at: dt.datetime
    uploaded_by: str
    source: str  # customer | engineer
    via: Transport
    content_type: str = "application/octet-stream"
    modified_at: dt.datetime | None = None


@dataclass
class Upload:
    id: str
    case_id: str
    file_id: str
    name: str
    length: int | None
    offset: int
    state: UploadState
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime
    created_by: str
    source: str
    via: Transport
    staging_key: str
    metadata: dict[str, str] = field(default_factory=dict)
    concat: ConcatKind = ConcatKind.NONE
    partials: list[str] = field(default_factory=list)
    content_type: str = "application/octet-stream"
    # The whole-file digests' state after exactly `offset` bytes (FileDigests.export), committed with it;
    # None when there is none (a new upload, after a truncate, or where it cannot be exported).
    digest_state: bytes | None = field(default=None, repr=False)

    @property
    def is_complete(self) -> bool:
        return self.length is not None and self.offset == self.length


@dataclass
class Session:
    id_hash: str
    user: str
    role: Role
    case_id: str | None
    csrf_token: str
    created_at: dt.datetime
    expires_at: dt.datetime


@dataclass
class SftpAccount:
    """A temporary SFTP login bound to one case. The password is kept only as an argon2id hash (to verify)
    and sealed with the gateway's account key (to show it again while the account is active)."""

    username: str
    case_id: str
    password_hash: str
    password_sealed: str
    created_at: dt.datetime
    expires_at: dt.datetime
    created_by: str
    revoked_at: dt.datetime | None = None
    authorized_keys: list[str] = field(default_factory=list)
    last_login_at: dt.datetime | None = None

    def active_at(self, now: dt.datetime) -> bool:
        """True while the account may log in: not revoked and not yet expired."""
        return self.revoked_at is None and now < self.expires_at


@dataclass
class AuditEvent:
    at: dt.datetime
    action: str
    actor: str
    role: str
    case_id: str | None
    target: str | None = None
    remote: str | None = None
    via: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
