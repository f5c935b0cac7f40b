"""Open SFTP file handles: a completed file being read, or an upload in progress being written."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from asyncssh import SFTPEOFError

from eftgw.files import FileService
from eftgw.model import FileRecord, Principal
from eftgw.sftp.buffer import BufferedUpload


class ReadHandle:
    """A completed file opened for reading.

    Clients read in increasing offsets, so reads are served from one open stream of the object; a read at
    another offset (a resumed download) opens the object again from there. Each (re)opening goes through
    :meth:`FileService.open`, which audits the download.
    """

    def __init__(self, files: FileService, principal: Principal, record: FileRecord) -> None:
        self.files = files
        self.principal = principal
        self.record = record
        self._stream: AsyncIterator[bytes] | None = None
        self._position = 0
        self._pending = memoryview(b"")

    async def start(self) -> None:
        """Open the file from its first byte (the download is audited now, even if nothing is read)."""
        await self._open_at(0)

    async def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``; :class:`SFTPEOFError` at or after the end."""
        if offset >= self.record.size or size <= 0:
            raise SFTPEOFError("End of file")
        if self._stream is None or offset != self._position:
            await self._open_at(offset)
        if self._stream is None:
            raise SFTPEOFError("End of file")
        out = bytearray()
        while len(out) < size:
            if not self._pending:
                chunk = await anext(self._stream, None)
                if chunk is None:
                    break
                self._pending = memoryview(chunk)
            take = self._pending[: size - len(out)]
            out += take
            self._pending = self._pending[len(take) :]
        if not out:
            raise SFTPEOFError("End of file")
        self._position += len(out)
        return bytes(out)

    async def _open_at(self, offset: int) -> None:
        await self.close()
        record = self.record
        download = await self.files.open(self.principal, record.case_id, record.id, start=offset)
        self._stream = download.stream
        self._position = offset

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        self._pending = memoryview(b"")
        if stream is not None:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()


@dataclass(eq=False)
class WriteHandle:
    """An upload in progress opened for writing.

    A write must start exactly where the accepted data ends (``buffer.end``): resuming is only possible from
    the durable size, and a write that would leave a gap, or rewrite earlier bytes, is refused. ``append`` is
    the SFTP ``FXF_APPEND`` flag: a write at offset 0 then lands at the end too (a client that names no
    offset), but one naming another offset than the end is refused (the client's idea of the size is stale,
    and appending would duplicate bytes or leave a gap). ``mtime`` is a
    modification time the client set while the upload was open, recorded on the file when it is finished.
    """

    upload_id: str
    append: bool
    buffer: BufferedUpload
    mtime_seconds: int | None = None
