"""The embedded default store: a local directory.

Staging data is one file per upload; a commit is ``fsync`` of that file, so a committed size survives
``kill -9`` and power loss. Where the filesystem takes it, a writer writes with direct I/O (``O_DIRECT``,
:class:`FilesystemWriter`): no copy of the body into the page cache. Promotion is a ``rename`` within the
same filesystem (then ``fsync`` of both directories). Tags are kept in a sidecar ``<key>.tags.json``
removed with the object.

Every system call runs in a worker thread through :func:`_io`, which converts its ``OSError`` the same way
everywhere: a missing file is :class:`ObjectNotFound`, a full disk or quota (ENOSPC, EDQUOT) is
:class:`OutOfSpace`, anything else :class:`StorageError`. A write that fails leaves the staging file longer
than its committed size at worst; :meth:`FilesystemWriter.rollback` (and the next :meth:`open_writer`) cut it
back, so nothing past the durable offset survives.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import json
import mmap
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

from eftgw.storage.base import ObjectNotFound, os_error

T = TypeVar("T")
READ_BLOCK = 1024 * 1024
IOV_MAX = 1024  # the most buffers one pwritev takes on Linux
# Direct I/O: file offsets, lengths and memory aligned to this (a page: a multiple of any disk's 512 bytes).
DIRECT_ALIGN = 4096
DIRECT_BUFFER = 2 * 1024 * 1024  # an aligned buffer direct writes copy into: the most one pwrite writes
DIRECT_BUFFERS_KEPT = 4  # free aligned buffers the node keeps for the next writes
TAGS_SUFFIX = ".tags.json"
O_DIRECT = getattr(os, "O_DIRECT", 0)


async def _io(what: str, fn: Callable[..., T], *args: Any) -> T:
    """Run the blocking ``fn(*args)`` in a worker thread; convert its ``OSError`` into a storage error."""
    try:
        return await asyncio.to_thread(fn, *args)
    except FileNotFoundError as exc:
        raise ObjectNotFound(str(exc.filename)) from exc
    except OSError as exc:
        raise os_error(exc, what) from exc


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_SYNC_FILE_RANGE = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``[offset, offset + length)`` to disk now, without waiting for it
    (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; nothing elsewhere). It makes nothing durable and
    promises nothing: the commit's ``fsync`` still does that, but finds most of a large body on disk already,
    so the disk works while the body arrives instead of after it."""
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # a failure shows at the fsync


class AlignedBuffers:
    """The aligned buffers (``DIRECT_BUFFER``) direct writes copy into, shared by all the node's writers: a
    write takes one for as long as it runs in its worker thread, so the node holds one per write under way
    (at most one per worker thread), and keeps up to ``keep`` free ones for the next writes."""

    def __init__(self, keep: int = DIRECT_BUFFERS_KEPT) -> None:
        self.keep = keep
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self.made = 0  # how many were ever allocated

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
            self.made += 1
        return mmap.mmap(-1, DIRECT_BUFFER)  # page-aligned

    def give(self, buffer: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buffer)
                return
        buffer.close()

    @property
    def free(self) -> int:
        with self._lock:
            return len(self._free)


BUFFERS = AlignedBuffers()


def _set_direct(fd: int, on: bool) -> None:
    """Turn direct I/O (``O_DIRECT``) on or off for ``fd``; ``EINVAL`` where the filesystem has none."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | O_DIRECT if on else flags & ~O_DIRECT)


def _takes_direct_io(fd: int) -> bool:
    """Whether the file of ``fd`` can be written with direct I/O (tmpfs and others refuse it: EINVAL)."""
    if not O_DIRECT:
        return False
    try:
        _set_direct(fd, True)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    _set_direct(fd, False)
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemWriter:
    """Appends in a worker thread; :meth:`commit` is ``fsync``.

    Where the filesystem takes direct I/O (``direct``), the bytes go from an aligned buffer
    (``DIRECT_BUFFER``, taken from the node's :data:`BUFFERS` for the write; one copy of the chunks, in
    the worker thread) straight to the disk: no copy into the page cache (on this project's 2-core test
    machine that copy cost up to 0.8 s of CPU per GiB, as much as the SHA-256), and no dirty pages for the
    commit's ``fsync`` to wait for. Direct writes cover whole ``DIRECT_ALIGN`` units only: the last,
    partial unit of a block is all the writer keeps between writes (``_carry``, under 4 KiB); it is
    written again, completed, with the next block, and :meth:`commit` writes it through the page cache
    before the ``fsync``. A writer opened at an offset inside a unit reads that unit's stored bytes first.
    The writer holds one descriptor, as the SFTP side's descriptor budget counts an open file:
    ``O_DIRECT`` is turned on (``fcntl``) for each direct write only, and off again. Without direct I/O (a
    filesystem that refuses ``O_DIRECT``, such as tmpfs), or once a direct write is refused, it writes
    with ``pwritev`` through the page cache, asking the kernel to start writeback as each block lands.
    """

    block_size = 2 * 1024 * 1024  # what the body pipeline gathers per write_chunks (see ChunkWriter)
    copies_chunks = True  # write_chunks is done with the chunks when it returns: their buffers may be reused

    def __init__(self, fd: int, offset: int, direct: bool = False) -> None:
        self._fd = fd
        self._direct = direct
        self._committed = offset
        self._position = offset
        # Direct writes: the unit (its file offset) the next write begins in, None when not known (it is read
        # at the next write), and that unit's bytes so far; during a write, the buffer it took and how many
        # of its bytes hold data (the unit's first).
        self._unit: int | None = None
        self._carry = b""
        self._buffer: mmap.mmap | None = None
        self._held = 0

    @property
    def direct(self) -> bool:
        """Whether this writer writes with direct I/O."""
        return self._direct

    async def write(self, data: bytes) -> None:
        await self.write_chunks([data])

    async def write_chunks(self, chunks: Sequence[bytes]) -> None:
        """Write the chunks after what this writer wrote, in order, in one worker thread."""
        position = self._position
        self._position += sum(len(c) for c in chunks)
        await _io("write", self._write_blocking, chunks, position)

    def _write_blocking(self, chunks: Sequence[bytes], position: int) -> None:
        if self._direct:
            self._write_direct(chunks, position)
        else:
            self._pwritev_all(chunks, position)
            start_writeback(self._fd, position, self._position - position)

    def _pwritev_all(self, chunks: Sequence[bytes | memoryview], position: int) -> None:
        views = [memoryview(c) for c in chunks if c]
        while views:
            written = os.pwritev(self._fd, views[:IOV_MAX], position)
            position += written
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if written:  # a short write ended inside this chunk
                views[0] = views[0][written:]

    # direct I/O ---------------------------------------------------------------------------------------

    def _write_direct(self, chunks: Sequence[bytes], position: int) -> None:
        if self._unit is None:
            self._load_unit(position)
        buffer = self._buffer = BUFFERS.take()
        try:
            buffer[: len(self._carry)] = self._carry
            self._held = len(self._carry)
            self._fill_direct(buffer, chunks)
            self._carry = buffer[: self._held] if self._unit is not None else b""
        except BaseException:
            self._unit, self._carry = None, b""  # unknown now: read again at the next write
            raise
        finally:
            self._buffer, self._held = None, 0
            BUFFERS.give(buffer)

    def _fill_direct(self, buffer: mmap.mmap, chunks: Sequence[bytes]) -> None:
        for index, chunk in enumerate(chunks):
            view = memoryview(chunk).cast("B")
            while view:
                taken = min(len(view), DIRECT_BUFFER - self._held)
                buffer[self._held : self._held + taken] = view[:taken]
                self._held += taken
                view = view[taken:]
                if self._held == DIRECT_BUFFER:
                    self._flush_units()
                    if not self._direct:  # refused: the rest goes through the page cache
                        self._drop_held()
                        rest: list[bytes | memoryview] = [view, *chunks[index + 1 :]]
                        self._pwritev_all(rest, self._position - sum(len(c) for c in rest))
                        return
        self._flush_units()
        if not self._direct:
            self._drop_held()

    def _drop_held(self) -> None:
        """Write what the buffer holds through the page cache and forget the unit (direct I/O stopped)."""
        if self._held and self._unit is not None:
            self._pwrite_buffered(self._held, self._unit, 0)
        self._unit, self._held = None, 0

    def _load_unit(self, position: int) -> None:
        """Begin at the unit ``position`` falls in, with that unit's stored bytes before it."""
        unit = position - position % DIRECT_ALIGN
        head = os.pread(self._fd, position - unit, unit) if position > unit else b""
        if len(head) != position - unit:
            raise OSError(
                errno.EIO, f"read {len(head)} of the {position - unit} stored bytes before {position}"
            )
        self._unit, self._carry = unit, head

    def _flush_units(self) -> None:
        """Write the buffer's whole units with direct I/O; keep its partial last unit at its start."""
        assert self._buffer is not None and self._unit is not None
        whole = self._held - self._held % DIRECT_ALIGN
        if whole:
            self._pwrite_direct(whole)
        rest = self._held - whole
        if rest:
            self._buffer.move(0, whole, rest)
        self._unit += whole
        self._held = rest

    def _pwrite_direct(self, length: int) -> None:
        assert self._buffer is not None and self._unit is not None and self._direct
        view = memoryview(self._buffer)[:length]
        position = self._unit
        try:
            _set_direct(self._fd, True)
            try:
                while view:
                    written = os.pwrite(self._fd, view, position)
                    view, position = view[written:], position + written
                    if written % DIRECT_ALIGN:
                        break  # a short write off a unit's edge: the rest is not aligned any more
            finally:
                _set_direct(self._fd, False)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._stop_direct()
        finally:
            del view
        if position != self._unit + length:  # what direct I/O did not write, through the page cache
            self._stop_direct()
            self._pwrite_buffered(self._unit + length - position, position, position - self._unit)

    def _pwrite_buffered(self, length: int, position: int, start: int) -> None:
        assert self._buffer is not None
        with memoryview(self._buffer) as whole:
            view = whole[start : start + length]
            while view:
                written = os.pwrite(self._fd, view, position)
                view, position = view[written:], position + written

    def _stop_direct(self) -> None:
        self._direct = False

    # commit -------------------------------------------------------------------------------------------

    async def commit(self) -> int:
        await _io("fsync", self._commit_blocking)
        self._committed = self._position
        return self._committed

    def _commit_blocking(self) -> None:
        if self._carry and self._unit is not None:
            # The partial last unit, through the page cache (the next direct write of it replaces it there).
            view, position = memoryview(self._carry), self._unit
            while view:
                written = os.pwrite(self._fd, view, position)
                view, position = view[written:], position + written
        os.fsync(self._fd)

    async def rollback(self) -> None:
        await _io("truncate", self._truncate, self._committed)
        self._position = self._committed
        self._unit, self._carry = None, b""  # the next direct write reads the unit it starts in

    def _truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        os.fsync(self._fd)

    async def close(self) -> None:
        try:
            if self._position != self._committed:
                await self.rollback()
        finally:
            os.close(self._fd)


class FilesystemStore:
    """:class:`~eftgw.storage.ObjectStore` over a local directory."""

    name = "filesystem"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or "\x00" in p for p in parts):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

    async def open(self) -> None:
        try:
            for sub in ("cases", "uploads"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, f"create {self.root}") from exc

    async def close(self) -> None:
        return None

    async def create_staging(self, key: str, target: str | None = None) -> None:
        path = self._path(key)

        def create() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(path.parent)

        await self._run(create)

    async def staging_size(self, key: str) -> int:
        return await self._size(self._path(key))

    async def open_writer(self, key: str, offset: int, via: str = "http") -> FilesystemWriter:
        # ``via`` does not matter here: a writer keeps under a disk unit between writes over any transport
        # (the aligned buffers are the node's, BUFFERS).
        del via
        path = self._path(key)

        def open_at() -> tuple[int, bool]:
            fd = os.open(path, os.O_RDWR)  # direct writes read the stored start of the unit they begin in
            try:
                size = os.fstat(fd).st_size
                if offset > size:
                    raise ValueError(f"offset {offset} beyond stored size {size}")
                if size > offset:  # bytes that were never acknowledged (a crash mid-request)
                    os.ftruncate(fd, offset)
                    os.fsync(fd)
                return fd, _takes_direct_io(fd)
            except BaseException:
                os.close(fd)
                raise

        fd, direct = await self._run(open_at)
        return FilesystemWriter(fd, offset, direct)

    def read_staging(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self._read(self._path(key), start, end)

    async def delete_staging(self, key: str) -> None:
        await self._unlink(self._path(key))

    async def promote(self, staging: str, key: str, tags: Mapping[str, str]) -> None:
        source, target = self._path(staging), self._path(key)

        def move() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._write_tags(target, tags)
            if not source.exists() and target.exists():
                return
            os.replace(source, target)
            _fsync_dir(target.parent)
            _fsync_dir(source.parent)

        await self._run(move)

    async def concatenate(self, stagings: list[str], key: str, tags: Mapping[str, str]) -> None:
        sources = [self._path(s) for s in stagings]
        target = self._path(key)

        def join() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".joining")
            with open(tmp, "wb") as out:
                for source in sources:
                    with open(source, "rb") as src:
                        while block := src.read(READ_BLOCK):
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
            self._write_tags(target, tags)
            os.replace(tmp, target)
            _fsync_dir(target.parent)

        await self._run(join)

    async def object_size(self, key: str) -> int:
        return await self._size(self._path(key))

    def read_object(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self._read(self._path(key), start, end)

    async def object_tags(self, key: str) -> dict[str, str]:
        path = self._path(key)
        try:
            text = await _io("read tags", path.with_name(path.name + TAGS_SUFFIX).read_text)
        except ObjectNotFound as exc:
            raise ObjectNotFound(key) from exc
        return dict(json.loads(text))

    async def delete_object(self, key: str) -> None:
        path = self._path(key)
        await self._unlink(path)
        await self._unlink(path.with_name(path.name + TAGS_SUFFIX))

    async def delete_objects(self, keys: Sequence[str]) -> None:
        paths = [self._path(key) for key in keys]

        def unlink_all() -> None:
            for path in paths:
                self._unlink_now(path)
                self._unlink_now(path.with_name(path.name + TAGS_SUFFIX))

        await self._run(unlink_all)

    async def list_keys(self, prefix: str) -> list[str]:
        # Walk only below the prefix's directory part, so listing one case costs what that case holds.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if any(p in (".", "..") for p in directory.split("/")):
            raise ValueError(f"invalid storage prefix {prefix!r}")
        start = self.root.joinpath(*directory.split("/")) if directory else self.root

        def walk() -> list[str]:
            out: list[str] = []
            for dirpath, _dirs, names in os.walk(start):
                for name in names:
                    rel = Path(dirpath, name).relative_to(self.root).as_posix()
                    if rel.startswith(prefix):
                        out.append(rel)
            return sorted(out)

        return await self._run(walk)

    # helpers ----------------------------------------------------------------------------------------

    @staticmethod
    def _write_tags(target: Path, tags: Mapping[str, str]) -> None:
        sidecar = target.with_name(target.name + TAGS_SUFFIX)
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(dict(tags), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, sidecar)

    async def _size(self, path: Path) -> int:
        return (await _io("stat", path.stat)).st_size

    async def _unlink(self, path: Path) -> None:
        def unlink() -> None:
            self._unlink_now(path)

        await self._run(unlink)

    def _unlink_now(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        # Remove the case's directory once it is empty, so a purge leaves nothing behind.
        parent = path.parent
        while parent != self.root and parent.parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    async def _read(self, path: Path, start: int, end: int | None) -> AsyncIterator[bytes]:
        handle: BinaryIO = await _io("open", path.open, "rb")
        try:
            await _io("seek", handle.seek, start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                size = READ_BLOCK if remaining is None else min(READ_BLOCK, remaining)
                block = await _io("read", handle.read, size)
                if not block:
                    break
                if remaining is not None:
                    remaining -= len(block)
                yield block
        finally:
            handle.close()

    @staticmethod
    async def _run(fn: Callable[[], T]) -> T:
        return await _io(fn.__name__, fn)
