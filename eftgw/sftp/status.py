"""Translation of core errors into SFTP status replies, done once for every SFTP request.

SFTP version 3 has few status codes: missing things are ``FX_NO_SUCH_FILE``, refusals are
``FX_PERMISSION_DENIED`` and everything else is ``FX_FAILURE``; the domain error's message goes with it, so
the client shows the user a sentence they can act on. Unexpected exceptions are logged and reported without
internals.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from asyncssh import SFTPError, SFTPFailure, SFTPNoSuchFile, SFTPPermissionDenied

from eftgw.errors import (
    CaseNotFound,
    DomainError,
    FileNotFound,
    Forbidden,
    Unauthenticated,
    UploadGone,
    UploadNotFound,
)

log = logging.getLogger("eftgw.sftp")


def sftp_error(exc: DomainError) -> SFTPError:
    """The SFTP status that carries a domain error."""
    if isinstance(exc, CaseNotFound | FileNotFound | UploadNotFound | UploadGone):
        return SFTPNoSuchFile(exc.message)
    if isinstance(exc, Forbidden | Unauthenticated):
        return SFTPPermissionDenied(exc.message)
    return SFTPFailure(exc.message)


@contextlib.contextmanager
def translated(operation: str) -> Iterator[None]:
    """Run one SFTP request's work: domain errors become SFTP statuses, bugs become a plain failure."""
    try:
        yield
    except SFTPError:
        raise
    except DomainError as exc:
        raise sftp_error(exc) from exc
    except Exception as exc:
        log.exception("SFTP %s failed", operation)
        raise SFTPFailure("The gateway could not complete this request; try again.") from exc
