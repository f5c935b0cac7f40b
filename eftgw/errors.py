"""Domain errors: one table of stable codes that every transport translates once.

Each error carries a ``code`` (stable, machine-readable), a ``message`` (a plain sentence a person can act
on) and a default HTTP status. SFTP maps the same codes to its own status values.
"""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """Base of every error the core reports to a transport."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400
    default_message: ClassVar[str] = "The request could not be processed."
    retry_after: int | None = None
    """Seconds after which trying again may help (HTTP ``Retry-After``); ``None``: retrying will not help."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class BadRequest(DomainError):
    code = "bad_request"
    default_message = "The request is malformed."


class Unauthenticated(DomainError):
    code = "unauthenticated"
    status = 401
    default_message = "Sign-in is required: the token or session is missing, invalid or expired."


class Forbidden(DomainError):
    code = "forbidden"
    status = 403
    default_message = "You are not allowed to do this."


class CsrfRejected(Forbidden):
    code = "csrf_rejected"
    default_message = "The request is missing its CSRF token; reload the page and try again."


class CaseClosed(Forbidden):
    code = "case_closed"
    default_message = "This case is closed: files can no longer be uploaded to it."


class CaseNotFound(DomainError):
    code = "case_not_found"
    status = 404
    default_message = "This case is not open for file transfer on this gateway."


class UploadNotFound(DomainError):
    code = "upload_not_found"
    status = 404
    default_message = "No such upload."


class UploadGone(DomainError):
    code = "upload_gone"
    status = 410
    default_message = "This upload has expired or was cancelled; start it again."


class FileNotFound(DomainError):
    code = "file_not_found"
    status = 404
    default_message = "No such file."


class OffsetMismatch(DomainError):
    code = "offset_mismatch"
    status = 409
    default_message = "The upload offset does not match the server's; ask the server where to resume."


class UploadLocked(DomainError):
    code = "upload_locked"
    status = 423
    default_message = "Another request is still writing to this upload; try again shortly."


class UploadTooLarge(DomainError):
    code = "upload_too_large"
    status = 413
    default_message = "The file is larger than this gateway accepts."


class LengthExceeded(DomainError):
    code = "length_exceeded"
    status = 413
    default_message = "More data was sent than the upload's declared length."


class ChecksumMismatch(DomainError):
    code = "checksum_mismatch"
    status = 460
    default_message = "The chunk did not match its checksum and was discarded; send it again."


class UnsupportedChecksum(DomainError):
    code = "unsupported_checksum"
    status = 400
    default_message = "The checksum algorithm is not supported."


class UploadIncomplete(DomainError):
    code = "upload_incomplete"
    status = 400
    default_message = "A partial upload named in the concatenation is not complete yet."


class RangeNotSatisfiable(DomainError):
    code = "range_not_satisfiable"
    status = 416
    default_message = "The requested range is outside the file."


class StorageUnavailable(DomainError):
    """The object store failed or cannot be reached; nothing that was acknowledged is lost.

    ``offset`` is set (by :meth:`kept_at`) when the error interrupted an upload: the durable offset to resume
    from. Transports say it to the client (tus ``Upload-Offset``; the SFTP status message).
    """

    code = "storage_unavailable"
    status = 503
    retry_after = 30
    default_message = "File storage is unavailable right now; your upload is kept, try again shortly."
    offset: int | None = None

    def kept_at(self, offset: int) -> StorageUnavailable:
        """The same error, saying at which offset the upload it interrupted is kept."""
        kept = type(self)(self.message_at(offset))
        kept.offset = offset
        kept.__cause__ = self.__cause__ or self
        return kept

    @staticmethod
    def message_at(offset: int) -> str:
        return (
            "File storage is unavailable right now; your upload is kept, try again shortly."
            f" It resumes at offset {offset}."
        )


class StorageFull(StorageUnavailable):
    """The object store has no space (or quota) left; nothing past the last acknowledged offset was kept."""

    code = "storage_full"
    status = 507
    retry_after = 300
    default_message = "The gateway's storage is full; everything it acknowledged is kept. Retry later."

    @staticmethod
    def message_at(offset: int) -> str:
        return f"The gateway's storage is full; your upload is kept at offset {offset} \u2014 retry later."


class Conflict(DomainError):
    code = "conflict"
    status = 409
    default_message = "The request conflicts with the current state."


class BodyInterrupted(Exception):
    """The transport lost the request body midway (client gone). What arrived before is kept.

    Not a :class:`DomainError`: nobody is left to answer; transports log it and close."""


class TooManyRequests(DomainError):
    """A quota or rate was reached; ``retry_after`` (seconds) says when trying again makes sense."""

    code = "too_many_requests"
    status = 429
    default_message = "Too many requests; try again later."

    def __init__(self, message: str | None = None, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)
