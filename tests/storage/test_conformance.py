"""The store contract (eftgw/storage/base.py), proven against every backend: filesystem and S3 (Ceph RGW).

Sizes are chosen so that S3 staging data spans 16 MiB parts plus a tail.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from eftgw.storage import ObjectNotFound, object_key, staging_key
from eftgw.storage.base import ObjectStore

MiB = 1024 * 1024
TAGS = {"case": "C", "region": "us", "file": "f_1", "sha256": "ab" * 32}


def data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


async def read_all(stream: Any) -> bytes:
    out = bytearray()
    async for block in stream:
        out += block
    return bytes(out)


async def stage(store: ObjectStore, key: str, *chunks: bytes) -> int:
    """Create staging data at ``key`` and append ``chunks``, committing after each; return the size."""
    await store.create_staging(key)
    size = 0
    for chunk in chunks:
        writer = await store.open_writer(key, size)
        await writer.write(chunk)
        size = await writer.commit()
        await writer.close()
    return size


# staging -----------------------------------------------------------------------------------------------


async def test_created_staging_is_empty(store: ObjectStore, case_id: str) -> None:
    """New staging data has size 0 and reads as nothing."""
    key = staging_key(case_id, "u1")
    await store.create_staging(key)
    assert await store.staging_size(key) == 0
    assert await read_all(store.read_staging(key)) == b""


async def test_creating_existing_staging_empties_it(store: ObjectStore, case_id: str) -> None:
    """Creating staging data at a key that holds data leaves it empty."""
    key = staging_key(case_id, "u1")
    await stage(store, key, data(10 * MiB))
    await store.create_staging(key)
    assert await store.staging_size(key) == 0
    assert await read_all(store.read_staging(key)) == b""


async def test_missing_staging_is_not_found(store: ObjectStore, case_id: str) -> None:
    """Size and writers of staging data that does not exist raise ObjectNotFound."""
    key = staging_key(case_id, "nope")
    with pytest.raises(ObjectNotFound):
        await store.staging_size(key)
    with pytest.raises(ObjectNotFound):
        await store.open_writer(key, 0)


async def test_commit_returns_durable_size_seen_by_another_node(
    store: ObjectStore, make_store: Callable[[], ObjectStore], case_id: str
) -> None:
    """After commit, a second store instance (another node) sees every written byte."""
    key = staging_key(case_id, "u1")
    await store.create_staging(key)
    payload = data(19 * MiB + 12345)
    writer = await store.open_writer(key, 0)
    for start in range(0, len(payload), 3 * MiB):
        await writer.write(payload[start : start + 3 * MiB])
    assert await writer.commit() == len(payload)
    await writer.close()
    other = make_store()
    await other.open()
    try:
        assert await other.staging_size(key) == len(payload)
        assert await read_all(other.read_staging(key)) == payload
    finally:
        await other.close()


async def test_uncommitted_bytes_are_dropped_by_close(store: ObjectStore, case_id: str) -> None:
    """Bytes written but never committed are not part of the staging data once the writer closes."""
    key = staging_key(case_id, "u1")
    first = data(3 * MiB, 1)
    size = await stage(store, key, first)
    writer = await store.open_writer(key, size)
    await writer.write(data(18 * MiB, 2))
    await writer.close()
    assert await store.staging_size(key) == size
    assert await read_all(store.read_staging(key)) == first


async def test_rollback_forgets_bytes_since_last_commit(store: ObjectStore, case_id: str) -> None:
    """Rollback drops what was written after the last commit, even across parts; writing goes on after it."""
    key = staging_key(case_id, "u1")
    await store.create_staging(key)
    a, b, c = data(6 * MiB, 1), data(13 * MiB, 2), data(4 * MiB, 3)
    writer = await store.open_writer(key, 0)
    await writer.write(a)
    assert await writer.commit() == len(a)
    await writer.write(b)
    await writer.rollback()
    await writer.write(c)
    assert await writer.commit() == len(a) + len(c)
    await writer.close()
    assert await read_all(store.read_staging(key)) == a + c


async def test_rollback_without_commit_returns_to_the_opening_offset(
    store: ObjectStore, case_id: str
) -> None:
    """Rollback of a writer that never committed returns the data to what it was when the writer opened."""
    key = staging_key(case_id, "u1")
    first = data(9 * MiB, 1)
    size = await stage(store, key, first)
    writer = await store.open_writer(key, size)
    await writer.write(data(10 * MiB, 2))
    await writer.rollback()
    await writer.close()
    assert await store.staging_size(key) == size
    assert await read_all(store.read_staging(key)) == first


async def test_writers_append_across_part_boundaries(store: ObjectStore, case_id: str) -> None:
    """Many writers, each appending and committing, build exactly the concatenation of their chunks."""
    key = staging_key(case_id, "u1")
    chunks = [data(n, i) for i, n in enumerate([1, 5 * MiB, 3 * MiB - 1, 7 * MiB, 2 * MiB, 6 * MiB + 7, 100])]
    size = await stage(store, key, *chunks)
    assert size == sum(map(len, chunks))
    assert await store.staging_size(key) == size
    assert await read_all(store.read_staging(key)) == b"".join(chunks)


@pytest.mark.parametrize("offset", [0, 1, 8 * MiB - 1, 8 * MiB, 9 * MiB + 3, 16 * MiB, 19 * MiB])
async def test_open_writer_drops_bytes_beyond_offset(
    store: ObjectStore, make_store: Callable[[], ObjectStore], case_id: str, offset: int
) -> None:
    """Opening a writer below the stored size durably drops the bytes beyond it; appending continues there."""
    key = staging_key(case_id, "u1")
    stored = data(20 * MiB, 1)
    await stage(store, key, stored)
    writer = await store.open_writer(key, offset)
    other = make_store()
    await other.open()
    try:
        assert await other.staging_size(key) == offset
    finally:
        await other.close()
    more = data(3 * MiB, 2)
    await writer.write(more)
    assert await writer.commit() == offset + len(more)
    await writer.close()
    assert await read_all(store.read_staging(key)) == stored[:offset] + more


async def test_open_writer_beyond_stored_size_is_refused(store: ObjectStore, case_id: str) -> None:
    """An offset past the committed size is a caller error, not silently accepted."""
    key = staging_key(case_id, "u1")
    size = await stage(store, key, data(1000))
    with pytest.raises(ValueError):
        await store.open_writer(key, size + 1)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),
        (0, 1),
        (5, 8 * MiB + 5),
        (8 * MiB, 16 * MiB),
        (8 * MiB - 1, 8 * MiB + 1),
        (17 * MiB, None),
        (3, 3),
        (0, 40 * MiB),
    ],
)
async def test_read_staging_yields_exactly_the_range(
    store: ObjectStore, case_id: str, start: int, end: int | None
) -> None:
    """read_staging yields the committed bytes [start, end), across parts and the tail."""
    key = staging_key(case_id, "u1")
    stored = data(17 * MiB + 999)
    await stage(store, key, stored)
    assert await read_all(store.read_staging(key, start, end)) == stored[start:end]


async def test_delete_staging_removes_everything(store: ObjectStore, case_id: str) -> None:
    """Deleting staging data removes all of it; deleting it again is not an error."""
    key = staging_key(case_id, "u1")
    await stage(store, key, data(18 * MiB))
    await store.delete_staging(key)
    with pytest.raises(ObjectNotFound):
        await store.staging_size(key)
    assert await store.list_keys(f"uploads/{case_id}/") == []
    await store.delete_staging(key)


# objects -----------------------------------------------------------------------------------------------


async def test_promote_makes_the_object_with_tags_and_removes_staging(
    store: ObjectStore, case_id: str
) -> None:
    """Promotion turns staging data into the tagged object and leaves no staging data behind."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    stored = data(17 * MiB + 5)
    await stage(store, key, stored[: 9 * MiB], stored[9 * MiB :])
    await store.promote(key, target, TAGS)
    assert await store.object_size(target) == len(stored)
    assert await read_all(store.read_object(target)) == stored
    assert (await store.object_tags(target)).items() >= TAGS.items()
    assert await store.list_keys(f"uploads/{case_id}/") == []
    assert await store.list_keys(f"cases/{case_id}/") == [target] or store.name == "filesystem"


@pytest.mark.parametrize("size", [0, 1, 5 * MiB, 8 * MiB, 8 * MiB + 1])
async def test_promote_handles_small_and_boundary_sizes(store: ObjectStore, case_id: str, size: int) -> None:
    """Promotion of empty, tiny and part-sized uploads yields the same bytes."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    stored = data(size)
    await stage(store, key, *([stored] if stored else []))
    await store.promote(key, target, TAGS)
    assert await store.object_size(target) == size
    assert await read_all(store.read_object(target)) == stored
    assert (await store.object_tags(target)).items() >= TAGS.items()


async def test_promote_is_idempotent(store: ObjectStore, case_id: str) -> None:
    """Promoting again after a promotion (a retry after a crash) succeeds and changes nothing."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    stored = data(9 * MiB)
    await stage(store, key, stored)
    await store.promote(key, target, TAGS)
    await store.promote(key, target, TAGS)
    assert await read_all(store.read_object(target)) == stored


async def test_promote_without_staging_or_object_is_not_found(store: ObjectStore, case_id: str) -> None:
    """Promoting staging data that never existed raises ObjectNotFound."""
    with pytest.raises(ObjectNotFound):
        await store.promote(staging_key(case_id, "nope"), object_key(case_id, "f_1"), TAGS)


async def test_concatenate_joins_in_order_and_keeps_the_parts(store: ObjectStore, case_id: str) -> None:
    """Concatenation makes the object from the stagings in order (short pieces too) and keeps the stagings."""
    pieces = [data(100_000, 1), data(9 * MiB + 1, 2), data(3, 3), data(6 * MiB, 4), data(17, 5)]
    keys = [staging_key(case_id, f"p{i}") for i in range(len(pieces))]
    for key, piece in zip(keys, pieces, strict=True):
        await stage(store, key, piece)
    target = object_key(case_id, "f_1")
    await store.concatenate(keys, target, TAGS)
    assert await read_all(store.read_object(target)) == b"".join(pieces)
    assert (await store.object_tags(target)).items() >= TAGS.items()
    for key, piece in zip(keys, pieces, strict=True):
        assert await read_all(store.read_staging(key)) == piece


@pytest.mark.parametrize(("start", "end"), [(0, None), (1, 2), (8 * MiB - 2, 8 * MiB + 2), (9 * MiB, None)])
async def test_read_object_yields_exactly_the_range(
    store: ObjectStore, case_id: str, start: int, end: int | None
) -> None:
    """read_object yields the bytes [start, end) of the object."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    stored = data(10 * MiB + 1)
    await stage(store, key, stored)
    await store.promote(key, target, TAGS)
    assert await read_all(store.read_object(target, start, end)) == stored[start:end]


async def test_missing_object_is_not_found(store: ObjectStore, case_id: str) -> None:
    """Size, content and tags of an object that does not exist raise ObjectNotFound."""
    target = object_key(case_id, "missing")
    with pytest.raises(ObjectNotFound):
        await store.object_size(target)
    with pytest.raises(ObjectNotFound):
        await read_all(store.read_object(target))
    with pytest.raises(ObjectNotFound):
        await store.object_tags(target)


async def test_delete_object_removes_it(store: ObjectStore, case_id: str) -> None:
    """A deleted object is gone with its tags; deleting it again is not an error."""
    key, target = staging_key(case_id, "u1"), object_key(case_id, "f_1")
    await stage(store, key, data(100))
    await store.promote(key, target, TAGS)
    await store.delete_object(target)
    with pytest.raises(ObjectNotFound):
        await store.object_size(target)
    assert await store.list_keys(f"cases/{case_id}/") == []
    await store.delete_object(target)


async def test_list_keys_shows_unfinished_work(store: ObjectStore, case_id: str) -> None:
    """Listing shows staging data, including parts a writer left uncommitted and never closed (a crash)."""
    key = staging_key(case_id, "u1")
    await stage(store, key, data(2 * MiB))
    abandoned = await store.open_writer(key, 2 * MiB)
    await abandoned.write(data(17 * MiB, 2))  # full parts reach the store; the node "dies" here
    # S3: the last full parts may still be on their way; let them land, as before the node died (else after
    # the delete below)
    inflight = getattr(abandoned, "_inflight", [])
    await asyncio.gather(*[task for task, _part in inflight])
    listed = await store.list_keys(f"uploads/{case_id}/")
    assert listed and all(k == key or k.startswith(key) for k in listed)
    await store.delete_staging(key)
    assert await store.list_keys(f"uploads/{case_id}/") == []
    assert await store.list_keys(f"cases/{case_id}/") == []
