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


@dataclass(frozen=True)
class Principal:
    """Who is acting: a user with a role, bound to one case unless an engineer or service."""

    user: str
    role: Role
    case_id: str | None = None
    via: str = "token"  # token | session | sftp | cli | system
    remote: str | None = None
    session_id: str | None = None

    def may_access_case(self, case_id: str) -> bool:
        if self.role is Role.ENGINEER or self.via == "system":
            return True
        if self.role is Role.CUSTOMER:
            return self.case_id == case_id
        return False

    @property
    def source(self) -> str:
        """Who a file uploaded by this principal is from: ``customer`` or ``engineer``."""
        return "engineer" if self.role is Role.ENGINEER else "customer"


SYSTEM = Principal(user="system", role=Role.SERVICE, via="system")


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
    via: str  # http | sftp
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
    via: str
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
