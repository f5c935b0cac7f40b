"""The body pipeline (``eftgw/ingest.py``) keeps a block as the chunks it arrived in and writes them without
copying: chunks of any size and number are stored and hashed in order, on the backend the test run selects,
and a chunk its producer changes after handing it over is stored as it was handed over. The filesystem
writer's vectored write (without direct I/O) stores every chunk in order even past the most buffers one
``pwritev`` takes, and after short writes (its direct I/O: ``tests/test_ingest_direct_io.py``)."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from eftgw.hashing import FileDigests
from eftgw.ingest import BLOCK_SIZE, SMALL_CHUNK, Ingest, block_write
from eftgw.model import Principal, Role
from eftgw.storage import StorageError, filesystem, object_key
from eftgw.storage.filesystem import IOV_MAX, FilesystemStore, FilesystemWriter
from tests.support import RunningGateway, random_chunks, writer_block_size

CUSTOMER = Principal("ingest-customer", Role.CUSTOMER, "C-1")


def small_chunks(total: int, seed: int) -> list[bytes]:
    """``total`` random bytes cut into chunks of 1 to 900 bytes."""
    return random_chunks(random.Random(seed), total, largest=900)


async def stored(gw: RunningGateway, upload_id: str) -> bytes:
    upload = await gw.gateway.uploads.get(CUSTOMER, "C-1", upload_id)
    return b"".join([b async for b in gw.gateway.store.read_object(object_key("C-1", upload.file_id))])


async def upload_in_chunks(gw: RunningGateway, name: str, chunks: list[bytes]) -> None:
    """Upload ``chunks`` as one body, then check that the file holds exactly their bytes and their SHA-256."""
    data = b"".join(chunks)
    uploads = gw.gateway.uploads
    upload = await uploads.create(CUSTOMER, "C-1", length=len(data), metadata={"filename": name})

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    done = await uploads.append(CUSTOMER, "C-1", upload.id, 0, body())
    assert done.offset == len(data)
    (record,) = await gw.gateway.files.list(CUSTOMER, "C-1")
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert await stored(gw, upload.id) == data


async def test_a_body_of_thousands_of_small_chunks_is_stored_and_hashed_in_order(gw: RunningGateway) -> None:
    """3 MiB sent as about 7000 chunks of up to 900 bytes (many more than one pwritev takes per block): the
    file holds exactly those bytes and its recorded SHA-256 is theirs."""
    chunks = small_chunks(3 * 1024 * 1024 + 777, seed=15)
    assert len(chunks) > 3 * IOV_MAX
    await upload_in_chunks(gw, "small.bin", chunks)


async def test_a_chunk_changed_by_its_producer_after_it_was_handed_over_is_stored_as_handed_over(
    gw: RunningGateway,
) -> None:
    """A body that hands over one reused buffer (as a bytearray), refilling it for each chunk: the pipeline
    keeps chunks until their block is written, so it must take a copy of a mutable one; the file holds
    every chunk as it was when handed over, and its SHA-256 says so."""
    chunks = [os.urandom(64 * 1024) for _ in range(40)]  # 2.5 MiB: blocks are written while chunks arrive
    data = b"".join(chunks)
    uploads = gw.gateway.uploads
    upload = await uploads.create(CUSTOMER, "C-1", length=len(data), metadata={"filename": "reused.bin"})
    buffer = bytearray(64 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            buffer[:] = chunk
            yield buffer  # type: ignore[misc]  # a producer that breaks the bytes contract

    await uploads.append(CUSTOMER, "C-1", upload.id, 0, body())
    (record,) = await gw.gateway.files.list(CUSTOMER, "C-1")
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert await stored(gw, upload.id) == data


@pytest.mark.once  # the filesystem writer on tmp_path whatever the backend: the second pass would repeat it
@pytest.mark.parametrize("short", [False, True], ids=["whole", "short-writes"])
async def test_the_filesystem_writer_stores_a_block_of_many_chunks_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short: bool
) -> None:
    """Through the page cache (a filesystem without direct I/O), ``write_chunks`` with 2.5 times as many
    chunks as one pwritev takes (and, if the kernel writes less than asked each time, after every short
    write) stores them in order after what was there, and the commit makes all of it durable."""
    if short:
        real = os.pwritev

        def at_most_1000_bytes(fd: int, buffers: list[memoryview], offset: int) -> int:
            assert len(buffers) <= IOV_MAX
            budget, cut = 1000, []
            for view in buffers:
                cut.append(view[:budget])
                budget -= len(cut[-1])
                if not budget:
                    break
            return real(fd, cut, offset)

        monkeypatch.setattr(os, "pwritev", at_most_1000_bytes)
    monkeypatch.setattr(filesystem, "_takes_direct_io", lambda fd: False)  # through the page cache: pwritev
    store = FilesystemStore(tmp_path / "store")
    await store.open()
    await store.create_staging("uploads/C-1/u")
    writer = await store.open_writer("uploads/C-1/u", 0)
    head = os.urandom(5000)
    await writer.write(head)
    chunks = small_chunks(IOV_MAX * 450 * 5 // 2, seed=7)
    assert len(chunks) > 2 * IOV_MAX
    await writer.write_chunks(chunks)
    assert await writer.commit() == len(head) + sum(len(c) for c in chunks)
    await writer.close()
    got = b"".join([b async for b in store.read_staging("uploads/C-1/u")])
    assert got == head + b"".join(chunks)


async def test_tiny_chunks_reach_the_store_gathered_in_few_pieces_per_block(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body sent in pieces of 1 to 900 bytes is gathered before it is written: each block (of the store's
    writer's ``block_size``) reaches the store as at most ``block_size / SMALL_CHUNK`` pieces plus one, not
    one Python object per few bytes (a client trickling a body would otherwise make every block hold
    thousands), and the file is exactly the body."""
    block_size = writer_block_size(gw)
    chunks = small_chunks(2 * block_size + 12_345, seed=16)
    pieces: list[int] = []
    sizes: list[int] = []
    consume = Ingest._consume

    async def counting(write: Any, digests: Any, checksum: Any, block: Sequence[bytes]) -> None:
        pieces.append(len(block))
        sizes.append(sum(map(len, block)))
        await consume(write, digests, checksum, block)

    monkeypatch.setattr(Ingest, "_consume", staticmethod(counting))
    await upload_in_chunks(gw, "tiny.bin", chunks)
    assert len(pieces) == 3 and max(pieces) <= block_size // SMALL_CHUNK + 1, pieces
    # the first two blocks are the writer's: each ends with the chunk that reached its block size
    assert all(block_size <= size < block_size + SMALL_CHUNK for size in sizes[:2]), sizes


async def test_a_block_is_written_while_it_is_hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole-file hashing of a block and its write run at the same time, in two worker threads: hashing
    that waits until the block's bytes are in the file sees them arrive (were both in one thread, one after
    the other, it would wait in vain), and the file and the digests both hold the block."""
    written = threading.Event()
    write = FilesystemWriter._write_blocking

    def write_blocking(self: FilesystemWriter, chunks: Sequence[bytes], position: int) -> None:
        write(self, chunks, position)
        written.set()

    monkeypatch.setattr(FilesystemWriter, "_write_blocking", write_blocking)
    seen: list[bool] = []

    class WaitingDigests(FileDigests):
        def update(self, data: bytes) -> None:
            seen.append(written.wait(timeout=20))
            super().update(data)

    store = FilesystemStore(tmp_path / "store")
    await store.open()
    await store.create_staging("uploads/C-1/u")
    writer = await store.open_writer("uploads/C-1/u", 0)
    block = [os.urandom(300_000), os.urandom(200_000)]
    digests = WaitingDigests()
    await Ingest._consume(block_write(writer), digests, None, block)
    assert await writer.commit() == 500_000
    await writer.close()
    assert seen == [True, True]
    assert digests.sha256_hex == hashlib.sha256(b"".join(block)).hexdigest()
    assert b"".join([b async for b in store.read_staging("uploads/C-1/u")]) == b"".join(block)


async def test_a_failed_write_is_reported_only_after_the_blocks_hashing_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails a block's write at once while its hashing still runs: the store's error reaches the
    caller only after the hashing ended, so no worker thread changes the digests behind the caller's back
    (the caller rolls back and may reuse or drop them)."""

    async def failing(self: FilesystemWriter, chunks: Sequence[bytes]) -> None:
        raise StorageError("the disk is gone")

    monkeypatch.setattr(FilesystemWriter, "write_chunks", failing)
    finished: list[float] = []

    class SlowDigests(FileDigests):
        def update(self, data: bytes) -> None:
            time.sleep(0.2)
            super().update(data)
            finished.append(time.monotonic())

    store = FilesystemStore(tmp_path / "store")
    await store.open()
    await store.create_staging("uploads/C-1/u")
    writer = await store.open_writer("uploads/C-1/u", 0)
    digests = SlowDigests()
    with pytest.raises(StorageError, match="the disk is gone"):
        await Ingest._consume(block_write(writer), digests, None, [b"a" * 1000, b"b" * 1000])
    raised_at = time.monotonic()
    await writer.close()
    assert len(finished) == 2 and finished[-1] <= raised_at
    assert digests.size == 2000


async def test_tiny_chunks_between_large_ones_reach_the_store_in_few_pieces(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny chunks mixed with large ones (1 MiB as 100-byte chunks, then a 1 MiB chunk, then 100-byte and
    64 KiB chunks taking turns) reach the store in at most two pieces per 64 KiB plus one per block: the
    pipeline is the one place that gathers tiny chunks, and the store keeps the pieces it is handed (an S3
    part is sent as them), so no store holds an object per few bytes. The file is exactly the body."""
    data = os.urandom(4 * BLOCK_SIZE)
    chunks = [data[at : min(at + 100, BLOCK_SIZE)] for at in range(0, BLOCK_SIZE, 100)]
    chunks.append(data[BLOCK_SIZE : 2 * BLOCK_SIZE])
    at = 2 * BLOCK_SIZE
    while at < len(data):
        chunks.append(data[at : at + 100])
        chunks.append(data[at + 100 : at + 100 + SMALL_CHUNK])
        at += 100 + SMALL_CHUNK
    blocks: list[list[int]] = []
    consume = Ingest._consume

    async def counting(write: Any, digests: Any, checksum: Any, block: Sequence[bytes]) -> None:
        blocks.append([len(piece) for piece in block])
        await consume(write, digests, checksum, block)

    monkeypatch.setattr(Ingest, "_consume", staticmethod(counting))
    await upload_in_chunks(gw, "mixed.bin", chunks)
    assert sum(map(sum, blocks)) == len(data)
    for block in blocks:
        assert len(block) <= 2 * (sum(block) // SMALL_CHUNK) + 1, block
    assert sum(map(len, blocks)) <= 2 * len(data) // SMALL_CHUNK + len(blocks)
