"""Conversions between table rows and the domain's dataclasses (one place for each mapping)."""

from __future__ import annotations

import dataclasses
from typing import Any

from eftgw.model import (
    AuditEvent,
    Case,
    CaseState,
    ConcatKind,
    FileRecord,
    SftpAccount,
    Transport,
    Upload,
    UploadState,
)


def case(row: Any) -> Case:
    return Case(
        id=row.id,
        state=CaseState(row.state),
        opened_at=row.opened_at,
        closed_at=row.closed_at,
        updated_at=row.updated_at,
    )


def file(row: Any) -> FileRecord:
    return FileRecord(
        id=row.id,
        case_id=row.case_id,
        name=row.name,
        size=row.size,
        sha256=row.sha256,
        xxh128=row.xxh128,
        object_key=row.object_key,
        content_type=row.content_type,
        uploaded_at=row.uploaded_at,
        uploaded_by=row.uploaded_by,
        source=row.source,
        via=Transport(row.via),
        modified_at=row.modified_at,
    )


def upload(row: Any) -> Upload:
    return Upload(
        id=row.id,
        case_id=row.case_id,
        file_id=row.file_id,
        name=row.name,
        length=row.length,
        offset=row.offset,
        state=UploadState(row.state),
        created_at=row.created_at,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
        created_by=row.created_by,
        source=row.source,
        via=Transport(row.via),
        staging_key=row.staging_key,
        metadata=dict(row.metadata),
        concat=ConcatKind(row.concat),
        partials=list(row.partials),
        content_type=row.content_type,
        digest_state=row.digest_state,
    )


def audit_values(event: AuditEvent) -> dict[str, Any]:
    """The event as column values (the id is the database's)."""
    values = dataclasses.asdict(event)
    del values["id"]
    return values


def file_values(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "case_id": record.case_id,
        "name": record.name,
        "size": record.size,
        "sha256": record.sha256,
        "xxh128": record.xxh128,
        "object_key": record.object_key,
        "content_type": record.content_type,
        "uploaded_at": record.uploaded_at,
        "uploaded_by": record.uploaded_by,
        "source": record.source,
        "via": record.via,
        "modified_at": record.modified_at,
    }


def account(row: Any) -> SftpAccount:
    return SftpAccount(
        username=row.username,
        case_id=row.case_id,
        password_hash=row.password_hash,
        password_sealed=row.password_sealed,
        created_at=row.created_at,
        expires_at=row.expires_at,
        created_by=row.created_by,
        revoked_at=row.revoked_at,
        authorized_keys=list(row.authorized_keys),
        last_login_at=row.last_login_at,
    )
