"""The store contract (after tusd's ``DataStore``): staging writes with durable commits, promotion of a
finished upload to an object, concatenation, ranged reads, deletion and listing."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from eftgw.errors import StorageFull, StorageUnavailable

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageError(StorageUnavailable):
    """A backend failed; the message is safe to show, the backend's own error is the ``__cause__``.

    Every method of every backend raises this (or :class:`OutOfSpace`, or :class:`ObjectNotFound`) and
    nothing else for a failure of the backend: each transport translates it once (HTTP 503, SFTP failure).
    """


class OutOfSpace(StorageError, StorageFull):
    """The backend has no space or quota left (ENOSPC, EDQUOT; S3 507, ``QuotaExceeded``): HTTP 507."""


def os_error(exc: OSError, what: str) -> StorageError:
    """The storage error for a failed system call: :class:`OutOfSpace` for a full disk or quota."""
    if exc.errno in NO_SPACE:
        return OutOfSpace(f"The storage directory is full ({what}: {exc.strerror}).")
    return StorageError(f"The storage directory failed ({what}: {exc.strerror or type(exc).__name__}).")


class ObjectNotFound(Exception):
    """The key does not exist in the store."""


def object_key(case_id: str, file_id: str) -> str:
    return f"cases/{case_id}/{file_id}"


def staging_key(case_id: str, upload_id: str) -> str:
    return f"uploads/{case_id}/{upload_id}"


class UploadWriter(Protocol):
    """Appends to one staging upload from the offset it was opened at."""

    async def write(self, data: bytes) -> None:
        """Append ``data`` after what was written before. Not durable until :meth:`commit`."""
        ...

    async def commit(self) -> int:
        """Make everything written so far durable; return the durable size of the staging data."""
        ...

    async def rollback(self) -> None:
        """Forget everything written since the last commit (or since opening)."""
        ...

    async def close(self) -> None:
        """Release the writer's resources. Uncommitted data is dropped, never made visible."""
        ...


@runtime_checkable
class ChunkWriter(Protocol):
    """A writer that takes a block as the chunks it arrived in, in one worker thread hop: the filesystem's (a
    blocking ``pwritev``) and S3's (which hashes each part as it fills)."""

    block_size: int
    """How many bytes the body pipeline gathers into one block for it: each block costs thread hops."""

    copies_chunks: bool
    """Whether the writer is done with the chunks once :meth:`write_chunks` returns (it wrote or copied
    them and keeps no reference to them): then the body pipeline may hand it a buffer it reuses for the next
    block. A writer that keeps a chunk past its write must say ``False``, and is handed chunks nobody
    changes afterwards. Both stores' writers copy (the filesystem's writes, S3's fills its part buffers)."""

    async def write_chunks(self, chunks: Sequence[bytes]) -> None:
        """Append ``chunks`` in order as :meth:`UploadWriter.write` would. The body pipeline hashes a block in
        a worker thread of its own while the writer writes it."""
        ...


@runtime_checkable
class HashingChunkWriter(ChunkWriter, Protocol):
    """A :class:`ChunkWriter` whose own worker thread hop also runs the body pipeline's hashing of the block
    (S3's: the hop that copies the block into its part buffers), so a block costs one hop instead of two."""

    async def write_chunks_along(self, chunks: Sequence[bytes], along: Callable[[], None]) -> None:
        """Append ``chunks`` as :meth:`write_chunks` does, and run ``along`` (the block's hashing) exactly
        once, in a worker thread, before the first byte of the block is taken in; when this returns it has
        ended. If the write fails before it began, ``along`` may not have run."""
        ...


class ObjectStore(Protocol):
    """The small storage contract every backend implements. Each method states its contract."""

    name: str

    async def open(self) -> None:
        """Prepare the backend (create the directory or bucket); raise :class:`StorageError` if impossible."""
        ...

    async def close(self) -> None: ...

    async def create_staging(self, key: str, target: str | None = None) -> None:
        """Create empty staging data at ``key`` (durably). Creating an existing key empties it.

        ``target`` is the object key a later :meth:`promote` will most likely name (the file's key), or
        ``None`` (a tus partial upload, never promoted itself). A backend may stage the data at the target
        already (S3: a multipart upload for it), so that promotion is a completion and not a copy; promotion
        to another key must still work.
        """
        ...

    async def staging_size(self, key: str) -> int:
        """Return the committed size of the staging data; :class:`ObjectNotFound` if it does not exist."""
        ...

    async def open_writer(self, key: str, offset: int, via: str = "http") -> UploadWriter:
        """Open staging data for appending at ``offset``, dropping anything stored beyond it.

        ``offset`` must not exceed the committed size; :class:`ObjectNotFound` if the key does not exist.
        ``via`` is the transport the bytes come over (``"http"`` or ``"sftp"``): a writer that keeps parts in
        memory keeps what that transport leaves of the upload's 64 MiB (:func:`eftgw.memory.writer_share`).
        """
        ...

    def read_staging(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield the committed staging bytes ``[start, end)``."""
        ...

    async def delete_staging(self, key: str) -> None:
        """Delete staging data and everything that belongs to it; deleting a missing key is not an error."""
        ...

    async def promote(self, staging: str, key: str, tags: Mapping[str, str]) -> None:
        """Turn finished staging data into the object ``key`` without copying through the gateway.

        Until this returns, ``key`` may hold leftovers of the staging (S3: a sealed prefix) that
        :meth:`delete_staging` removes with it; only after it returned is the object the file.

        Idempotent: if the staging data is gone and ``key`` exists, the promotion already happened.
        """
        ...

    async def concatenate(self, stagings: list[str], key: str, tags: Mapping[str, str]) -> None:
        """Make the object ``key`` from several finished staging uploads, in order; the parts remain."""
        ...

    async def object_size(self, key: str) -> int:
        """Size of the object; :class:`ObjectNotFound` if there is none."""
        ...

    def read_object(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield the bytes ``[start, end)`` of the object; :class:`ObjectNotFound` if there is none."""
        ...

    async def object_tags(self, key: str) -> dict[str, str]:
        """The tags given at promotion or concatenation."""
        ...

    async def delete_object(self, key: str) -> None:
        """Delete the object (every version of it); deleting a missing key is not an error."""
        ...

    async def delete_objects(self, keys: Sequence[str]) -> None:
        """Delete many objects, each as :meth:`delete_object` does (a purge removes a case's files at once:
        one call, not one round trip to a worker thread per file)."""
        ...

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``: objects and staging data, including leftovers of unfinished work."""
        ...
