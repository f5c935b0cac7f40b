"""S3 parts are filled into the node's pool of reused part buffer segments (``BufferBudget.take_segments``):
segments serve part after part, the pool never holds more than the budget, and every path of a writer
(commit, rollback, a failed part, cancellation) gives each part's segments and reservation back exactly once,
never while a worker thread still sends them. Proven with real writers against the real S3 server (RGW)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from eftgw.storage import ObjectNotFound, StorageError, object_key, staging_key
from eftgw.storage.budget import SEGMENT, BufferBudget
from eftgw.storage.s3 import S3Store
from eftgw.storage.s3_client import Body
from eftgw.storage.s3_writer import WRITER_MEMORY, S3Writer
from tests.storage.conftest import S3Server
from tests.storage.test_conformance import TAGS, MiB, data, read_all

PART = 16 * MiB  # the first parts' size


@pytest.fixture
async def store(s3_server: S3Server, s3_bucket: str) -> AsyncIterator[S3Store]:
    store = S3Store(s3_server.client(s3_bucket), budget=BufferBudget(512 * MiB))
    await store.open()
    yield store
    await store.close()


def settled(budget: BufferBudget) -> None:
    """Nothing is reserved or lent any more, and every segment ever mapped is in the pool once: none was lost,
    none given back twice."""
    assert budget.used == 0 and budget.waiting == 0
    assert budget.lent == 0
    assert budget.idle == budget.mapped
    assert len({id(segment) for segment in budget._idle}) == budget.idle


async def write_in_blocks(writer: S3Writer, stored: bytes, block: int = 2 * MiB) -> None:
    for at in range(0, len(stored), block):
        await writer.write_chunks([stored[at : at + block]])


async def test_segments_serve_the_next_parts_and_uploads(store: S3Store, case_id: str) -> None:
    """Two uploads of 80 MiB one after the other fill ten 16 MiB parts (640 segments) but map at most one
    writer's share of segments in all (229): parts take the segments earlier parts gave back. Every byte is
    stored; the chunks a part was given were changed once write_chunks returned (one buffer for every block,
    as the body pipeline reuses its blocks): the parts copied them."""
    budget = store.budget
    for n in range(2):
        key, target = staging_key(case_id, f"reuse{n}"), object_key(case_id, f"f_reuse{n}")
        await store.create_staging(key, target)
        stored = data(80 * MiB, 40 + n)
        writer = await store.open_writer(key, 0)
        try:
            block = bytearray(2 * MiB)
            for at in range(0, len(stored), len(block)):
                block[:] = stored[at : at + len(block)]
                await writer.write_chunks([memoryview(block)])
                block[:] = bytes(len(block))  # changed at once: nothing kept it
            assert await writer.commit() == len(stored)
        finally:
            await writer.close()
        settled(budget)
        await store.promote(key, target, TAGS)
        assert await read_all(store.read_object(target)) == stored
    assert 0 < budget.mapped * SEGMENT <= WRITER_MEMORY < 2 * 80 * MiB


async def test_the_pool_never_holds_more_than_the_budget(
    s3_server: S3Server, s3_bucket: str, case_id: str
) -> None:
    """Against a budget of 8 MiB, smaller than one 16 MiB part (a request larger than the budget takes the
    whole budget), a part still fills its 16 MiB; once it is stored the pool keeps only the budget's 8 MiB of
    segments mapped and unmaps the rest. Segments idle plus segments lent never exceed the budget after a
    part was given back."""
    store = S3Store(s3_server.client(s3_bucket), budget=BufferBudget(8 * MiB))
    await store.open()
    budget = store.budget
    try:
        key, target = staging_key(case_id, "cap"), object_key(case_id, "f_cap")
        await store.create_staging(key, target)
        stored = data(40 * MiB, 50)
        writer = await store.open_writer(key, 0)
        try:
            for at in range(0, len(stored), 2 * MiB):
                await writer.write_chunks([stored[at : at + 2 * MiB]])
                if budget.lent == 0:
                    assert budget.idle * SEGMENT <= budget.limit
            assert await writer.commit() == len(stored)
        finally:
            await writer.close()
        assert budget.mapped * SEGMENT > budget.limit  # parts needed more than the budget at once
        assert budget.used == 0 and budget.lent == 0
        assert budget.idle * SEGMENT == budget.limit  # what it keeps: the budget, no more
        await store.promote(key, target, TAGS)
        assert await read_all(store.read_object(target)) == stored
    finally:
        await store.close()
    assert budget.idle == 0  # the store's close unmaps them


async def test_a_rollback_after_a_commit_keeps_the_tail_out_of_the_reused_segments(
    store: S3Store, case_id: str
) -> None:
    """A commit keeps the part filling as the committed tail (views of its segments); a rollback drops the
    part, whose segments go back to the pool and are the next part's at once. The tail is copied out before:
    what the writer writes next lands after the right bytes. Repeated over two rollbacks, the budget and pool
    settle with every segment back once."""
    key, target = staging_key(case_id, "tail"), object_key(case_id, "f_tail")
    await store.create_staging(key, target)
    first, junk, rest = data(5 * MiB + 3, 60), data(3 * MiB, 61), data(14 * MiB, 62)
    writer = await store.open_writer(key, 0)
    try:
        await write_in_blocks(writer, first)
        assert await writer.commit() == len(first)
        for _ in range(2):
            await write_in_blocks(writer, junk)
            await writer.rollback()
        await write_in_blocks(writer, rest)  # fills a part from the pool's segments, the tail first
        assert await writer.commit() == len(first) + len(rest)
    finally:
        await writer.close()
    settled(store.budget)
    await store.promote(key, target, TAGS)
    assert await read_all(store.read_object(target)) == first + rest


async def test_a_failed_part_gives_its_buffer_back_once(store: S3Store, case_id: str) -> None:
    """A part whose upload fails (the multipart upload was aborted on the server) gives its segments and
    reservation back, as the parts stored and the part filling do when the writer closes."""
    key, target = staging_key(case_id, "fail"), object_key(case_id, "f_fail")
    await store.create_staging(key, target)
    writer = await store.open_writer(key, 0)
    try:
        await write_in_blocks(writer, data(PART, 70))
        assert await writer.commit() == PART
        assert writer._upload is not None
        await store.client.abort_multipart(target, writer._upload)
        with pytest.raises((StorageError, ObjectNotFound)):
            await write_in_blocks(writer, data(2 * PART + 5 * MiB, 71))  # parts 2 and 3 fail
            await writer.commit()
    finally:
        await writer.close()
    settled(store.budget)


class HeldSend:
    """Holds the worker thread sending a part in the middle of its body until ``go`` is set (it reads the
    first piece, then waits before the next), and records what the body gave after the hold."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sending = threading.Event()
        self.go = threading.Event()
        self.after: list[bytes] = []
        read = Body.read

        def held_read(body: Body, size: int = -1) -> bytes | memoryview:
            if body.tell() == SEGMENT and not self.go.is_set():
                self.sending.set()
                assert self.go.wait(120)
                piece = read(body, size)
                self.after.append(bytes(piece))
                return piece
            return read(body, size)

        monkeypatch.setattr(Body, "read", held_read)


@pytest.mark.parametrize("cancels", [1, 2], ids=["cancelled", "cancelled-twice"])
async def test_a_part_cancelled_while_it_is_sent_is_given_back_once_the_send_ended(
    store: S3Store, case_id: str, monkeypatch: pytest.MonkeyPatch, cancels: int
) -> None:
    """The task storing a part is cancelled (once, or again while it waits) while its worker thread is in the
    middle of sending the part's body: the part's segments stay lent, not handed to the next part, until the
    thread has ended; then they come back once. Meanwhile another upload takes segments of the pool, and the
    body the thread went on sending is still the part's bytes."""
    budget = store.budget
    held = HeldSend(monkeypatch)
    key = staging_key(case_id, f"cancel{cancels}")
    await store.create_staging(key, object_key(case_id, f"f_cancel{cancels}"))
    part = data(PART, 80 + cancels)
    writer = await store.open_writer(key, 0)
    try:
        await write_in_blocks(writer, part)  # part 1 is full: its upload starts
        task, _part = writer._inflight[0]
        assert await asyncio.to_thread(held.sending.wait, 60)
        lent = budget.lent
        assert lent == PART // SEGMENT
        for _ in range(cancels):
            task.cancel()
            for _ in range(20):
                await asyncio.sleep(0)
        assert budget.lent == lent  # the thread still reads them: not given back
        if cancels == 2:
            assert task.done()  # the second cancel ended the task; the give-back waits for the thread
        else:
            assert not task.done()
        taken = budget.take_segments(PART // SEGMENT)  # another part meanwhile: never the lent segments
        for segment in taken:
            segment[:] = b"\xff" * SEGMENT
        held.go.set()
        await asyncio.wait([task])
        assert task.cancelled()
        async with asyncio.timeout(120):
            while budget.lent != len(taken):  # noqa: ASYNC110 (the thread ending reaches the loop as a callback)
                await asyncio.sleep(0.01)
        budget.give_back(taken, 0)
        assert held.after == [part[SEGMENT : 2 * SEGMENT]]  # the part's bytes, not the other part's
    finally:
        held.go.set()
        await writer.close()
    settled(budget)


async def test_a_cancelled_request_leaves_the_pool_settled(store: S3Store, case_id: str) -> None:
    """A request cancelled while its writer fills parts and waits for parts in flight (its client went away)
    and then closed gives every segment and reservation back; the committed bytes stay."""
    key = staging_key(case_id, "gone")
    await store.create_staging(key, object_key(case_id, "f_gone"))
    writer = await store.open_writer(key, 0)
    committed = data(3 * MiB, 90)
    await write_in_blocks(writer, committed)
    assert await writer.commit() == len(committed)
    started = asyncio.Event()

    async def request() -> None:
        stored = data(100 * MiB, 91)
        for at in range(0, len(stored), 2 * MiB):
            await writer.write_chunks([stored[at : at + 2 * MiB]])
            if at >= 40 * MiB:
                started.set()

    task = asyncio.ensure_future(request())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await writer.rollback()
    await writer.close()
    settled(store.budget)
    assert await store.staging_size(key) == len(committed)
    assert await read_all(store.read_staging(key)) == committed
