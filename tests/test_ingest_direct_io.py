"""The filesystem writer's direct I/O (``eftgw/storage/filesystem.py``): a body goes from the writer's aligned
buffer to the disk without a copy into the page cache; appends that start and end inside a disk unit, across
writers, commits and rollbacks, store exactly their bytes; and a filesystem or a write that refuses direct
I/O gets the same bytes through the page cache."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import random
from pathlib import Path

import pytest

from eftgw.storage.filesystem import DIRECT_ALIGN, DIRECT_BUFFER, FilesystemStore, FilesystemWriter
from tests.support import random_chunks

pytestmark = pytest.mark.once  # the filesystem writer on tmp_path whatever the backend

KEY = "uploads/C-1/u"


async def new_store(tmp_path: Path) -> FilesystemStore:
    store = FilesystemStore(tmp_path / "store")
    await store.open()
    await store.create_staging(KEY)
    return store


async def stored(store: FilesystemStore) -> bytes:
    return b"".join([b async for b in store.read_staging(KEY)])


def resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (``mincore`` over a mapping of it)."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
            return sum(byte & 1 for byte in vector.raw)
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


def chunks_of(rng: random.Random, total: int) -> list[bytes]:
    return random_chunks(rng, total, largest=300_000)


async def test_a_body_reaches_the_disk_without_passing_through_the_page_cache(tmp_path: Path) -> None:
    """10 MiB and 1000 bytes written in odd-sized chunks and committed: the writer used direct I/O, the file
    holds exactly the bytes, and at most the last, partial unit (written at the commit) is in the page cache;
    written through the page cache, all 2561 pages would be there after the ``fsync``."""
    store = await new_store(tmp_path)
    path = tmp_path / "store" / KEY
    writer = await store.open_writer(KEY, 0)
    assert isinstance(writer, FilesystemWriter) and writer.direct
    data = random.Random(1).randbytes(10 * 1024 * 1024 + 1000)
    chunks = [data[at : at + 250_001] for at in range(0, len(data), 250_001)]
    for at in range(0, len(chunks), 5):
        await writer.write_chunks(chunks[at : at + 5])
    assert await writer.commit() == len(data)
    await writer.close()
    assert resident_pages(path) <= 1
    assert await stored(store) == data


async def test_appends_starting_and_ending_inside_a_unit_store_exactly_their_bytes(tmp_path: Path) -> None:
    """Eight writers in turn, each opened at the stored size (mostly inside a unit), writing blocks of odd
    sizes (some over the aligned buffer's size), one rolled back after writing and then continuing with a
    few bytes: after each commit the file is exactly what was committed."""
    store = await new_store(tmp_path)
    rng = random.Random(5)
    data = b""
    for turn in range(8):
        committed = data
        writer = await store.open_writer(KEY, len(data))
        assert isinstance(writer, FilesystemWriter) and writer.direct
        for _ in range(rng.randint(1, 3)):
            chunks = chunks_of(rng, rng.randint(1, DIRECT_BUFFER + DIRECT_BUFFER // 2))
            await writer.write_chunks(chunks)
            data += b"".join(chunks)
        if turn == 3:
            await writer.rollback()
            data = committed
            tail = rng.randbytes(DIRECT_ALIGN + 17)
            await writer.write(tail)
            data += tail
        assert await writer.commit() == len(data)
        await writer.close()
        assert await stored(store) == data, turn


async def test_a_filesystem_without_direct_io_gets_the_bytes_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where turning ``O_DIRECT`` on is refused (as tmpfs does, EINVAL), the writer writes through the page
    cache instead, and the file holds the bytes."""
    real_fcntl = fcntl.fcntl

    def no_direct(fd: int, command: int, arg: int = 0) -> int:
        if command == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, command, arg)

    store = await new_store(tmp_path)
    monkeypatch.setattr(fcntl, "fcntl", no_direct)
    writer = await store.open_writer(KEY, 0)
    assert isinstance(writer, FilesystemWriter) and not writer.direct
    chunks = chunks_of(random.Random(2), 3 * 1024 * 1024 + 5)
    await writer.write_chunks(chunks)
    assert await writer.commit() == sum(len(c) for c in chunks)
    await writer.close()
    assert await stored(store) == b"".join(chunks)


async def test_a_writer_holds_one_descriptor_and_leaves_it_without_o_direct(tmp_path: Path) -> None:
    """An open writer holds one file descriptor (the SFTP side's descriptor budget counts one per open file),
    direct writes and all: ``O_DIRECT`` is on only while a direct write runs, so the commit's write of the
    partial last unit and the ``fsync`` use the same descriptor; closing the writer gives it back."""

    def descriptors() -> dict[int, str]:
        """The process's open descriptors and what each refers to (the listing's own is gone by then)."""
        found = {}
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):
                found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        return found

    store = await new_store(tmp_path)
    staging = str(tmp_path / "store" / KEY)
    assert staging not in descriptors().values()
    writer = await store.open_writer(KEY, 0)
    assert isinstance(writer, FilesystemWriter) and writer.direct
    (fd,) = (fd for fd, target in descriptors().items() if target == staging)
    chunks = chunks_of(random.Random(5), 2 * DIRECT_BUFFER + 123)
    await writer.write_chunks(chunks)
    assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    assert list(descriptors().values()).count(staging) == 1 and writer.direct
    assert await writer.commit() == sum(len(c) for c in chunks)
    await writer.close()
    assert staging not in descriptors().values()
    assert await stored(store) == b"".join(chunks)


@pytest.mark.parametrize("refused_at", [0, 2])
async def test_a_direct_write_the_kernel_refuses_is_written_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_at: int
) -> None:
    """The kernel refuses a direct write (EINVAL) at the first one or after two: that write and all later
    ones go through the page cache, the writer says it no longer writes directly, and the file holds every
    byte in order."""
    real_pwrite = os.pwrite
    direct_writes = []

    def refusing(fd: int, data: memoryview, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            direct_writes.append(len(data))
            if len(direct_writes) > refused_at:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    store = await new_store(tmp_path)
    writer = await store.open_writer(KEY, 0)
    assert isinstance(writer, FilesystemWriter) and writer.direct
    monkeypatch.setattr(os, "pwrite", refusing)
    chunks = chunks_of(random.Random(3), 3 * DIRECT_BUFFER + 333)
    for at in range(0, len(chunks), 4):
        await writer.write_chunks(chunks[at : at + 4])
    assert not writer.direct
    assert len(direct_writes) == refused_at + 1
    assert await writer.commit() == sum(len(c) for c in chunks)
    await writer.close()
    assert await stored(store) == b"".join(chunks)


async def test_a_short_direct_write_is_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel writes at most three units per direct write (aligned), or 1000 bytes of one (not aligned:
    the rest of that write then goes through the page cache): the file holds every byte in order."""
    real_pwrite = os.pwrite
    calls = []

    def short(fd: int, data: memoryview, offset: int) -> int:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        calls.append(direct)
        limit = 1000 if direct and len(calls) == 7 else 3 * DIRECT_ALIGN
        return real_pwrite(fd, data[:limit], offset)

    store = await new_store(tmp_path)
    writer = await store.open_writer(KEY, 0)
    monkeypatch.setattr(os, "pwrite", short)
    chunks = chunks_of(random.Random(4), DIRECT_BUFFER + 77)
    await writer.write_chunks(chunks)
    assert await writer.commit() == sum(len(c) for c in chunks)
    await writer.close()
    assert calls[:6] == [True] * 6 and not writer.direct
    assert await stored(store) == b"".join(chunks)
