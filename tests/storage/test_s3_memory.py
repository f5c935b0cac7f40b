"""Memory of S3 uploads is bounded: at most 64 MiB per upload, and a node-wide budget that makes writers wait
(backpressure) instead of growing, proven with real writers against the real S3 server (Ceph RGW)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import mmap
import resource
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from eftgw.config import Settings
from eftgw.storage import object_key, staging_key
from eftgw.storage.budget import SEGMENT, BufferBudget, keep_freed_buffers
from eftgw.storage.s3 import S3Store
from eftgw.storage.s3_client import Body
from eftgw.storage.s3_writer import WRITER_MEMORY, S3Writer
from tests.storage.conftest import S3Server
from tests.storage.test_conformance import TAGS, MiB, data, read_all


@pytest.fixture
async def small_budget_store(s3_server: S3Server, s3_bucket: str) -> AsyncIterator[S3Store]:
    store = S3Store(s3_server.client(s3_bucket), budget=BufferBudget(48 * MiB))
    await store.open()
    yield store
    await store.close()


async def test_one_upload_holds_at_most_its_share(s3_server: S3Server, s3_bucket: str, case_id: str) -> None:
    """A 200 MiB upload through one writer never keeps more than its share (53.25 MiB: three 16 MiB parts in
    flight and the fourth filling part of the way) even when the node's budget would allow more, and reserves
    at most 64 MiB of the budget (four whole parts)."""
    store = S3Store(s3_server.client(s3_bucket), budget=BufferBudget(1024 * MiB))
    await store.open()
    try:
        key, target = staging_key(case_id, "big"), object_key(case_id, "f_big")
        await store.create_staging(key, target)
        writer = await store.open_writer(key, 0)
        digest = hashlib.sha256()
        for i in range(200):
            block = data(MiB, i)
            digest.update(block)
            await writer.write(block)
            assert len(writer._inflight) <= 3 and writer.held <= WRITER_MEMORY
        assert await writer.commit() == 200 * MiB
        await writer.close()
        assert 0 < store.budget.peak <= 64 * MiB
        assert store.budget.used == 0
        await store.promote(key, target, TAGS)
        stored = hashlib.sha256(await read_all(store.read_object(target))).hexdigest()
        assert stored == digest.hexdigest()
    finally:
        await store.close()


class KeptMemory:
    """What the parts of a writer really keep alive: the segments of the node's pool they hold (a part copies
    every chunk into its segments and keeps no chunk), counted each time a part takes segments, so the peak
    is exact."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.budgets: set[BufferBudget] = set()
        self.peak = 0
        take = BufferBudget.take_segments

        def counting_take(budget: BufferBudget, count: int) -> list[mmap.mmap]:
            taken = take(budget, count)
            self.budgets.add(budget)
            self.peak = max(self.peak, self.now())
            return taken

        monkeypatch.setattr(BufferBudget, "take_segments", counting_take)

    def now(self) -> int:
        return sum(budget.lent for budget in self.budgets) * SEGMENT


async def promoted_holds(store: S3Store, key: str, target: str, stored: bytes) -> None:
    """Promote the upload at ``key`` to ``target`` and check the object holds exactly ``stored``."""
    await store.promote(key, target, TAGS)
    got = hashlib.sha256(await read_all(store.read_object(target))).digest()
    assert got == hashlib.sha256(stored).digest()


@pytest.mark.parametrize(
    ("memory", "inflight"), [(WRITER_MEMORY, 3), (24 * MiB, 1)], ids=["share-53.25-MiB", "share-24-MiB"]
)
async def test_a_writer_keeps_its_share_and_parts_in_flight_against_a_slow_store(
    s3_server: S3Server,
    s3_bucket: str,
    case_id: str,
    monkeypatch: pytest.MonkeyPatch,
    memory: int,
    inflight: int,
) -> None:
    """A writer fed 112 MiB as the body pipeline feeds it (blocks of 4 MiB in chunks that straddle the part
    boundaries) against a store that uploads a part only once the writer has run out of room keeps alive at
    most its share, and all of it: with 16 MiB parts and the default share (53.25 MiB) three parts are in
    flight at once while the fourth fills its first 5.25 MiB; with a 24 MiB share (as 32 MiB parts have with
    the default one) one part uploads while the next fills 8 MiB, where a part-granular rule would leave none
    in flight. Every byte is stored, and no part keeps a chunk alive past its own bytes."""
    store = S3Store(s3_server.client(s3_bucket), budget=BufferBudget(1024 * MiB), writer_memory=memory)
    await store.open()
    kept = KeptMemory(monkeypatch)
    # A part is stored only when the writer waits for room (the oldest one, one per wait) or commits (all):
    # no part lands while the writer fills, so what it holds when it waits is exact, however loaded the host.
    turns = asyncio.Semaphore(0)
    free = False
    running, most_running = 0, 0
    held_at_waits: list[int] = []
    upload_part, wait_for_part, commit = store.client.upload_part, S3Writer._wait_for_part, S3Writer.commit

    def release_all() -> None:
        nonlocal free
        free = True
        for _ in range(64):
            turns.release()

    async def slow_upload_part(
        name: str, upload: str, number: int, body: Body, sha256: str | None = None
    ) -> Any:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        try:
            if not free:
                await turns.acquire()
            return await upload_part(name, upload, number, body, sha256)
        finally:
            running -= 1

    async def waiting_for_part(writer: S3Writer) -> None:
        held_at_waits.append(writer.held)
        turns.release()
        await wait_for_part(writer)

    async def committing(writer: S3Writer) -> int:
        release_all()
        return await commit(writer)

    store.client.upload_part = slow_upload_part  # type: ignore[method-assign]
    monkeypatch.setattr(S3Writer, "_wait_for_part", waiting_for_part)
    monkeypatch.setattr(S3Writer, "commit", committing)
    try:
        key, target = staging_key(case_id, "slow"), object_key(case_id, "f_slow")
        await store.create_staging(key, target)
        stored = data(112 * MiB, 3)
        chunks = [stored[at : at + 300_001] for at in range(0, len(stored), 300_001)]
        writer = await store.open_writer(key, 0)
        try:
            for at in range(0, len(chunks), 14):  # 4.0 MiB blocks, as the HTTPS pipeline's
                await writer.write_chunks(chunks[at : at + 14])
                assert writer.held <= memory
            assert await writer.commit() == len(stored)
        finally:
            release_all()  # a failure above must not leave the close waiting for parts that wait for a turn
            await writer.close()
        assert held_at_waits and set(held_at_waits) == {memory}  # it waits only once its share is full
        assert kept.peak == memory  # the share, all of it and never more
        assert most_running == inflight
        assert store.budget.used == 0 and kept.now() == 0
        await promoted_holds(store, key, target, stored)
    finally:
        await store.close()


async def test_a_part_stored_while_the_next_one_fills_leaves_that_one_room(
    s3_server: S3Server, s3_bucket: str, case_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part in flight is stored while the worker thread fills the next part, and that fill runs out of
    the writer's share: the writer goes on with the room the stored part left instead of failing for want of
    a part in flight to wait for. (On a loaded host a part's upload can end before the fill does: a 20 GiB
    upload hit this once its parts were 32 MiB, one in flight.) Here the share is 24 MiB and 40 MiB come in
    one block, so part 2 fills 8 MiB, and part 1 is stored before that fill returns. Every byte is stored."""
    store = S3Store(s3_server.client(s3_bucket), budget=BufferBudget(1024 * MiB), writer_memory=24 * MiB)
    await store.open()
    fill = S3Writer._fill
    landed_during_fills = 0

    async def fill_then_land(
        writer: S3Writer, part: Any, pieces: list[memoryview], along: Any = None
    ) -> list[memoryview]:
        nonlocal landed_during_fills
        left = await fill(writer, part, pieces, along)
        inflight = [task for task, _part in writer._inflight if not task.done()]
        if inflight and left:
            await asyncio.wait(inflight)  # stored before the fill "returns"
            landed_during_fills += 1
        return left

    monkeypatch.setattr(S3Writer, "_fill", fill_then_land)
    try:
        key, target = staging_key(case_id, "race"), object_key(case_id, "f_race")
        await store.create_staging(key, target)
        stored = data(40 * MiB, 7)
        writer = await store.open_writer(key, 0)
        try:
            await writer.write_chunks([stored[at : at + 300_001] for at in range(0, len(stored), 300_001)])
            assert await writer.commit() == len(stored)
        finally:
            await writer.close()
        assert landed_during_fills >= 1
        await promoted_holds(store, key, target, stored)
    finally:
        await store.close()


async def test_many_uploads_wait_for_a_small_budget(small_budget_store: S3Store, case_id: str) -> None:
    """Twelve uploads of 40 MiB at once against a 48 MiB budget (three parts): writers wait for room
    instead of holding more, all of them finish with the right bytes, and the budget is whole again."""
    store = small_budget_store
    waited: list[int] = []

    async def upload(n: int) -> None:
        key, target = staging_key(case_id, f"u{n}"), object_key(case_id, f"f_{n}")
        await store.create_staging(key, target)
        writer = await store.open_writer(key, 0)
        try:
            for i in range(40):
                await writer.write(data(MiB, n * 100 + i))
                waited.append(store.budget.waiting)
                assert store.budget.used <= store.budget.limit
            assert await writer.commit() == 40 * MiB
        finally:
            await writer.close()
        await store.promote(key, target, TAGS)

    async with asyncio.timeout(600):
        await asyncio.gather(*(upload(n) for n in range(12)))
    assert store.budget.peak <= 48 * MiB
    assert max(waited) > 0  # some writers really waited
    assert store.budget.used == 0 and store.budget.waiting == 0
    for n in range(12):
        expected = b"".join(data(MiB, n * 100 + i) for i in range(40))
        assert await read_all(store.read_object(object_key(case_id, f"f_{n}"))) == expected


async def test_a_waiting_writer_that_is_cancelled_gives_nothing_away() -> None:
    """A writer cancelled while it waits for room (its client went away) takes no room, and the next
    waiter gets what is freed; requests larger than the budget take the whole budget, so they never wait
    forever."""
    budget = BufferBudget(32 * MiB)
    assert await budget.acquire(16 * MiB) == 16 * MiB
    assert await budget.acquire(16 * MiB) == 16 * MiB
    first = asyncio.ensure_future(budget.acquire(16 * MiB))
    second = asyncio.ensure_future(budget.acquire(8 * MiB))
    await asyncio.sleep(0)
    assert budget.waiting == 2
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    budget.release(16 * MiB)
    assert await second == 8 * MiB
    assert budget.used == 24 * MiB
    budget.release(24 * MiB)
    assert await budget.acquire(100 * MiB) == 32 * MiB  # clamped to the whole budget
    budget.release(32 * MiB)
    assert budget.used == 0 and budget.waiting == 0


def test_the_budget_is_a_setting() -> None:
    """EFTGW_UPLOAD_MEMORY sizes the node's budget (512 MiB by default); spooled parts go under the data
    directory."""
    settings = Settings(storage="s3", s3_endpoint="127.0.0.1:1", upload_memory=64 * MiB)
    assert S3Store.from_settings(settings).budget.limit == 64 * MiB
    default = Settings(storage="s3", s3_endpoint="127.0.0.1:1")
    assert S3Store.from_settings(default).budget.limit == 512 * MiB
    assert S3Store.from_settings(default).spool_dir == default.resolved_data_dir / "spool"  # spooled parts


def spool_maps(spool: Path) -> list[str]:
    """The mappings of this process that are files in ``spool`` (a spooled part or tail still mapped)."""
    return [line for line in Path("/proc/self/maps").read_text().splitlines() if str(spool) in line]


async def test_parts_too_large_for_memory_fill_a_temporary_file(
    s3_server: S3Server, s3_bucket: str, case_id: str, tmp_path: Path
) -> None:
    """With a writer's memory below the part size (as parts of 64 MiB and up are, past 46.9 GiB), parts and
    long tails are kept in unlinked temporary files, not in memory: the writer reserves nothing from the
    budget while commits, a takeover that reads a long tail back, a rollback, a truncate inside the tail,
    reads and promotion all keep every byte, and no temporary file is left mapped afterwards."""
    spool = tmp_path / "spool"
    store = S3Store(s3_server.client(s3_bucket), writer_memory=4 * MiB, spool_dir=spool)
    await store.open()
    try:
        key, target = staging_key(case_id, "spooled"), object_key(case_id, "f_spooled")
        await store.create_staging(key, target)
        blocks = [data(MiB, 500 + i) for i in range(45)]
        sent = 0
        for start in range(0, 45, 7):  # a new writer per request: each one reads the tail back (> 4 MiB)
            writer = await store.open_writer(key, sent * MiB)
            try:
                for block in blocks[start : start + 7]:
                    await writer.write(block)
                    assert spool_maps(spool), "the part is filled in a spooled file"
                sent = min(45, start + 7)
                assert await writer.commit() == sent * MiB
                await writer.write(data(3 * MiB, 999))  # never committed: dropped
                await writer.rollback()
            finally:
                await writer.close()
        assert store.budget.peak == 0  # nothing of it was held in memory
        expected = b"".join(blocks)
        assert await store.staging_size(key) == 45 * MiB
        assert await read_all(store.read_staging(key, 33 * MiB)) == expected[33 * MiB :]  # the tail (12 MiB)
        writer = await store.open_writer(key, 40 * MiB)  # a truncate inside the spooled tail
        try:
            await writer.write(expected[40 * MiB :])
            assert await writer.commit() == 45 * MiB
        finally:
            await writer.close()
        await store.promote(key, target, TAGS)
        assert (
            hashlib.sha256(await read_all(store.read_object(target))).digest()
            == hashlib.sha256(expected).digest()
        )
        gc.collect()
        assert spool_maps(spool) == []
    finally:
        await store.close()


def test_freed_part_buffers_are_reused_without_page_faults() -> None:
    """After :func:`keep_freed_buffers` (the gateway calls it when it starts), buffers like a part's received
    chunks (64 of 256 KiB, written and then freed together) are served again from the memory the last ones
    freed: four more rounds of them take almost no page faults, where glibc's defaults would hand the memory
    back to the kernel after each round and fault every 4 KiB page in again (about 4,000 per round)."""
    assert keep_freed_buffers()

    def one_part() -> None:
        chunks = [b"\x01" * (256 * 1024) for _ in range(64)]  # every page written, as received data is
        del chunks

    one_part()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(4):
        one_part()
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    assert faults < 1000, faults
