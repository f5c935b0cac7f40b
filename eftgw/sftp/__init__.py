"""The SFTP transport: temporary per-case accounts, served by asyncssh over the same core as HTTP.

A customer logs in with a temporary account (:mod:`eftgw.accounts`) and sees one flat folder, ``/``: their
case's completed files (their own and those engineers placed) and their uploads in progress. An upload over
SFTP is an ordinary core upload (``UploadService``, ``via="sftp"``): it lands in the case's storage under
``uploads/<case>/<upload-id>`` while in progress and becomes the file ``cases/<case>/<file-id>`` when
finished, listed and downloaded like any other.

Modules: :mod:`~eftgw.sftp.server` (listener, logins, live sessions), :mod:`~eftgw.sftp.defender`
(failed-login scores and bans), :mod:`~eftgw.sftp.hostkeys`,
:mod:`~eftgw.sftp.asyncssh_compat` (asyncssh internals),
:mod:`~eftgw.sftp.fs` (the SFTP operations), :mod:`~eftgw.sftp.area` (the view of the case),
:mod:`~eftgw.sftp.buffer` (bounded write buffer, flushed in parts), :mod:`~eftgw.sftp.handles`,
:mod:`~eftgw.sftp.paths` and :mod:`~eftgw.sftp.status` (errors to SFTP statuses).
"""

from eftgw.sftp.server import SftpService

__all__ = ["SftpService"]
