"""The bounded write buffer: writes do not wait for storage while there is room, wait when it is full,
and memory stays within the buffer's capacity, in the core and over a real SFTP session."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from sftp_support import OPERATOR, GatewayThread, paramiko_sftp, settings_for, sha256

from eftgw.errors import CaseClosed
from eftgw.gateway import Gateway
from eftgw.ingest import BLOCK_SIZE
from eftgw.memory import SFTP_PIECE
from eftgw.model import Principal, Role
from eftgw.sftp.buffer import BufferedUpload
from eftgw.storage import ObjectStore, UploadWriter
from eftgw.storage.budget import BufferBudget

CUSTOMER = Principal("sftp-customer", Role.CUSTOMER, "CASE-1", via="sftp")
KIB = 1024


class SlowWriter:
    """An upload writer whose every write takes ``delay`` seconds (slow object storage)."""

    def __init__(self, inner: UploadWriter, delay: float, gate: asyncio.Event | None) -> None:
        self.inner = inner
        self.delay = delay
        self.gate = gate

    async def write(self, data: bytes) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        await self.inner.write(data)

    async def commit(self) -> int:
        return await self.inner.commit()

    async def rollback(self) -> None:
        await self.inner.rollback()

    async def close(self) -> None:
        await self.inner.close()


class SlowStore:
    """Wraps a real store; only staging writes are slowed down (or held until ``gate`` opens)."""

    def __init__(self, inner: ObjectStore, delay: float, gate: asyncio.Event | None = None) -> None:
        self.inner = inner
        self.delay = delay
        self.gate = gate
        self.name = inner.name

    async def open_writer(self, key: str, offset: int, via: str = "http") -> SlowWriter:
        return SlowWriter(await self.inner.open_writer(key, offset, via), self.delay, self.gate)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def promote(self, staging: str, key: str, tags: Mapping[str, str]) -> None:
        await self.inner.promote(staging, key, tags)

    def read_staging(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self.inner.read_staging(key, start, end)


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Gateway]:
    gateway = Gateway.build(settings_for(tmp_path / "data"))
    await gateway.start()
    await gateway.cases.open(OPERATOR, "CASE-1")
    yield gateway
    await gateway.close()


async def test_writes_return_without_waiting_for_storage_while_there_is_room(core: Gateway) -> None:
    """With storage stalled, writes are accepted at once until the buffer (plus the block the core is
    storing) is full; the next write waits (backpressure) until storage takes data; then all is durable."""
    gate = asyncio.Event()
    core.uploads.store = core.uploads.ingest.store = SlowStore(core.store, 0.0, gate)
    upload = await core.uploads.create(
        CUSTOMER, "CASE-1", length=None, metadata={"filename": "x"}, via="sftp"
    )
    capacity = 1024 * KIB
    buffer = BufferedUpload(core.uploads, CUSTOMER, "CASE-1", upload.id, 0, capacity=capacity)
    chunks: list[bytes] = []
    while True:
        chunk = os.urandom(32 * KIB)
        pending = asyncio.create_task(buffer.write(chunk))
        # Storage takes nothing until the gate opens, so a write that returns was accepted without waiting
        # for it; the generous wait only tells a blocked write from a slow machine.
        done, _ = await asyncio.wait({pending}, timeout=2.0)
        chunks.append(chunk)
        if not done:
            break
        assert len(chunks) < 200, "the buffer never filled up"
    accepted = 32 * KIB * (len(chunks) - 1)
    assert capacity <= accepted <= capacity + 2 * BLOCK_SIZE  # the buffer plus the core's block(s)
    assert buffer.durable == 0
    gate.set()
    await asyncio.wait_for(pending, 10)
    await asyncio.wait_for(buffer.flush(), 30)
    assert buffer.durable == buffer.end == 32 * KIB * len(chunks)
    assert (await core.uploads.get(CUSTOMER, "CASE-1", upload.id)).offset == buffer.durable
    finished = await core.uploads.finish(CUSTOMER, "CASE-1", upload.id)
    record = await core.repo.get_file("CASE-1", finished.file_id)
    assert record is not None and record.sha256 == sha256(b"".join(chunks))


async def test_queued_bytes_never_exceed_the_capacity(core: Gateway) -> None:
    """While a slow store drains it in parts, the bytes held in memory stay within the capacity."""
    core.uploads.store = core.uploads.ingest.store = SlowStore(core.store, 0.002)
    upload = await core.uploads.create(
        CUSTOMER, "CASE-1", length=None, metadata={"filename": "y"}, via="sftp"
    )
    buffer = BufferedUpload(
        core.uploads, CUSTOMER, "CASE-1", upload.id, 0, capacity=512 * KIB, part_size=2 << 20
    )
    peak = 0
    for _ in range(300):
        await buffer.write(os.urandom(32 * KIB))
        peak = max(peak, buffer._queued)
    await buffer.flush()
    assert peak <= 512 * KIB
    assert buffer.durable == 300 * 32 * KIB


async def test_a_storage_error_surfaces_on_the_next_write_and_keeps_the_durable_prefix(core: Gateway) -> None:
    """When a part cannot be stored (the case closed meanwhile), later writes and the flush report it, and
    the upload keeps exactly the bytes made durable before."""
    upload = await core.uploads.create(
        CUSTOMER, "CASE-1", length=None, metadata={"filename": "z"}, via="sftp"
    )
    buffer = BufferedUpload(core.uploads, CUSTOMER, "CASE-1", upload.id, 0)
    await buffer.write(b"a" * 1000)
    await buffer.flush()
    await core.cases.close(OPERATOR, "CASE-1")
    await buffer.write(b"b" * 1000)
    with pytest.raises(CaseClosed):
        await buffer.flush()
    with pytest.raises(CaseClosed):
        await buffer.write(b"c")
    assert (await core.repo.get_upload(upload.id)).offset == 1000  # type: ignore[union-attr]


def test_an_sftp_session_is_slowed_down_not_buffered_without_bound(gateway: GatewayThread) -> None:
    """Over a real session with slow storage, the client is held back by the full buffer (the upload takes
    as long as storage needs) and the gateway never holds more than the buffer's capacity for it."""
    gateway.call(_slow_storage(gateway, 0.05))
    capacity = gateway.sftp.context.buffer_capacity
    account = gateway.account()
    data = os.urandom(24 * 1024 * KIB)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], gateway.call(_queued(gateway)))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        with paramiko_sftp(gateway.port, account) as (_t, sftp), sftp.open("slow.bin", "wb") as out:
            out.set_pipelined(True)
            for offset in range(0, len(data), 32 * KIB):
                out.write(data[offset : offset + 32 * KIB])
    finally:
        stop.set()
        sampler.join(10)
    # 24 blocks of 1 MiB reach storage at 0.05 s each: the client cannot have finished sooner.
    assert time.monotonic() - started >= 24 * 0.05
    assert 0 < peak[0] <= capacity
    assert gateway.file_named("slow.bin").sha256 == sha256(data)


async def _slow_storage(gateway: GatewayThread, delay: float) -> None:
    gateway.gw.uploads.store = gateway.gw.uploads.ingest.store = SlowStore(gateway.gw.store, delay)


async def _queued(gateway: GatewayThread) -> int:
    writers = gateway.sftp.context.writers._writers
    return max((w._queued for w in writers.values()), default=0)


async def test_the_buffers_of_all_handles_together_stay_within_the_node_write_memory(core: Gateway) -> None:
    """Four handles share a 1.5 MiB write memory, each with a 1 MiB buffer of its own, and storage is
    stalled: their queues hold at most the shared memory together (four full buffers would be 4 MiB; the
    core's own blocks per upload come on top, as before); once storage moves every byte lands, and the
    memory is all given back. Before, each handle took its full capacity: a hundred sessions, a hundred
    buffers."""
    gate = asyncio.Event()
    core.uploads.store = core.uploads.ingest.store = SlowStore(core.store, 0.0, gate)
    shared = BufferBudget(1536 * KIB)
    buffers = []
    for i in range(4):
        upload = await core.uploads.create(
            CUSTOMER, "CASE-1", length=None, metadata={"filename": f"m{i}"}, via="sftp"
        )
        buffers.append(
            BufferedUpload(core.uploads, CUSTOMER, "CASE-1", upload.id, 0, capacity=1024 * KIB, budget=shared)
        )
    sent: list[list[bytes]] = [[] for _ in buffers]
    blocked: list[asyncio.Task[None]] = []
    for _ in range(200):  # bounded: 200 x 4 x 32 KiB is far more than the buffers and the core's blocks
        for i, buffer in enumerate(buffers):
            if any(t.get_name() == f"w{i}" for t in blocked):
                continue
            chunk = os.urandom(32 * KIB)
            sent[i].append(chunk)
            task = asyncio.create_task(buffer.write(chunk), name=f"w{i}")
            done, _ = await asyncio.wait({task}, timeout=2.0)
            if not done:
                blocked.append(task)
        if len(blocked) == len(buffers):
            break
    assert len(blocked) == len(buffers), "writes never waited for the shared memory"
    queued = sum(b._queued for b in buffers)
    assert queued <= shared.limit and shared.used == queued
    gate.set()
    await asyncio.wait_for(asyncio.gather(*blocked), 30)
    for i, buffer in enumerate(buffers):
        await asyncio.wait_for(buffer.flush(), 30)
        assert buffer.durable == buffer.end == 32 * KIB * len(sent[i])
        finished = await core.uploads.finish(CUSTOMER, "CASE-1", buffer.upload_id)
        record = await core.repo.get_file("CASE-1", finished.file_id)
        assert record is not None and record.sha256 == sha256(b"".join(sent[i]))
    assert shared.used == 0 and shared.peak <= shared.limit


def test_concurrent_sessions_share_the_node_write_memory(gateway_factory: Any) -> None:
    """Over real sessions (four paramiko clients writing at once, storage slow), what all the gateway's
    write buffers hold together never exceeds ``EFTGW_SFTP_WRITE_MEMORY``, although each handle's own buffer
    could take more; every file arrives intact."""
    limit = 2 * 1024 * KIB
    gateway = gateway_factory(settings={"sftp_write_memory": limit})
    assert gateway.sftp.context.buffer_capacity > limit / 4  # four full buffers would exceed the limit
    gateway.call(_slow_storage(gateway, 0.02))
    accounts = [gateway.account() for _ in range(4)]
    data = [os.urandom(6 * 1024 * KIB) for _ in accounts]
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], gateway.call(_queued_total(gateway)))
            time.sleep(0.01)

    def put(i: int) -> None:
        with paramiko_sftp(gateway.port, accounts[i]) as (_t, sftp), sftp.open(f"c{i}.bin", "wb") as out:
            out.set_pipelined(True)
            for offset in range(0, len(data[i]), 32 * KIB):
                out.write(data[i][offset : offset + 32 * KIB])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clients = [threading.Thread(target=put, args=(i,)) for i in range(len(accounts))]
    try:
        for client in clients:
            client.start()
        for client in clients:
            client.join(120)
    finally:
        stop.set()
        sampler.join(10)
    assert not any(c.is_alive() for c in clients)
    assert 0 < peak[0] <= limit
    assert gateway.call(_budget_used(gateway)) == 0
    for i in range(len(accounts)):
        assert gateway.file_named(f"c{i}.bin").sha256 == sha256(data[i])


async def _queued_total(gateway: GatewayThread) -> int:
    return sum(w._queued for w in gateway.sftp.context.writers._writers.values())


async def _budget_used(gateway: GatewayThread) -> int:
    return gateway.sftp.context.write_memory.used


class PieceRecorder:
    """The core's upload service, recording the size of every piece a buffer hands its appends."""

    def __init__(self, uploads: Any) -> None:
        self.uploads = uploads
        self.pieces: list[int] = []

    async def append(self, *args: Any) -> Any:
        *head, body = args

        async def recorded() -> AsyncIterator[bytes]:
            async for piece in body:
                self.pieces.append(len(piece))
                yield piece

        return await self.uploads.append(*head, recorded())


async def test_pieces_stay_within_a_mib_and_the_budget_balances_with_large_writes(core: Gateway) -> None:
    """Writes of 1.5 MiB and 4 MiB (the largest request asyncssh takes; clients may ignore the 256 KiB the
    gateway advertises) reach the core in pieces of at most 1 MiB, as ``eftgw.memory`` counts them in the
    pipeline (a write is cut, its rest stays queued), and the node's write memory, smaller than one write,
    is given back exactly. Before, a piece was joined until it reached 1 MiB: up to 5 MiB."""
    upload = await core.uploads.create(
        CUSTOMER, "CASE-1", length=None, metadata={"filename": "large-writes"}, via="sftp"
    )
    recorder = PieceRecorder(core.uploads)
    budget = BufferBudget(1024 * KIB)
    buffer = BufferedUpload(
        recorder,  # type: ignore[arg-type]
        CUSTOMER,
        "CASE-1",
        upload.id,
        0,
        capacity=8 * 1024 * KIB,
        budget=budget,
    )
    writes = [
        os.urandom(1536 * KIB),
        os.urandom(4 * 1024 * KIB),
        os.urandom(100 * KIB),
        os.urandom(4096 * KIB),
    ]
    for data in writes:
        await buffer.write(memoryview(data))
    await asyncio.wait_for(buffer.flush(), 60)
    assert max(recorder.pieces) == SFTP_PIECE and sum(recorder.pieces) == sum(len(w) for w in writes)
    assert budget.used == 0
    finished = await core.uploads.finish(CUSTOMER, "CASE-1", upload.id)
    record = await core.repo.get_file("CASE-1", finished.file_id)
    assert record is not None and record.sha256 == sha256(b"".join(writes))


async def test_a_write_that_is_a_small_share_of_its_packet_is_copied_and_a_whole_one_is_not(
    core: Gateway,
) -> None:
    """A hostile client can pack many tiny writes into large SSH packets: a queue that kept each write as a
    view of its packet would keep whole packets alive while counting a few bytes. Such a write is queued as
    a copy of its own bytes; a write that is its packet but for the headers stays a view (no copy)."""
    gate = asyncio.Event()  # storage stalls: everything written stays queued
    core.uploads.store = core.uploads.ingest.store = SlowStore(core.store, 0, gate)
    upload = await core.uploads.create(
        CUSTOMER, "CASE-1", length=None, metadata={"filename": "z"}, via="sftp"
    )
    buffer = BufferedUpload(core.uploads, CUSTOMER, "CASE-1", upload.id, 0, part_size=2 << 20)
    packet = os.urandom(256 * KIB)
    tiny = memoryview(packet)[1000:1001]
    whole = os.urandom(32 * KIB + 40)
    most = memoryview(whole)[40:]
    await buffer.write(tiny)
    await buffer.write(most)
    queued = list(buffer._queue)
    kept_alive = [entry.obj for entry in queued if isinstance(entry, memoryview)]
    assert all(obj is not packet for obj in kept_alive)
    assert any(obj is whole for obj in kept_alive)
    gate.set()
    await buffer.flush()
    assert buffer.durable == 1 + 32 * KIB
    stored = b"".join(
        [chunk async for chunk in core.store.read_staging(upload.staging_key, 0, buffer.durable)]
    )
    assert stored == packet[1000:1001] + whole[40:]


async def test_large_writes_of_their_own_reach_the_core_as_they_are_and_others_are_joined(
    core: Gateway,
) -> None:
    """A queued write that is a ``bytes`` of 64 KiB to 1 MiB (the data of a write request, joined once from
    its packets) is handed to the core as that very object, a piece of its own; views and small writes are
    joined into pieces as before, and a write above 1 MiB is cut. Everything lands in order."""
    handed: list[bytes] = []

    class Recorder(PieceRecorder):
        async def append(self, *args: Any) -> Any:
            *head, body = args

            async def recorded() -> AsyncIterator[bytes]:
                async for piece in body:
                    handed.append(piece)
                    yield piece

            return await self.uploads.append(*head, recorded())

    upload = await core.uploads.create(
        CUSTOMER, "CASE-1", length=None, metadata={"filename": "whole-writes"}, via="sftp"
    )
    buffer = BufferedUpload(
        Recorder(core.uploads),  # type: ignore[arg-type]
        CUSTOMER,
        "CASE-1",
        upload.id,
        0,
        capacity=8 * 1024 * KIB,
    )
    first, second, small, large, huge = (os.urandom(n * KIB) for n in (255, 255, 10, 300, 1536))
    view = memoryview(os.urandom(32 * KIB))
    for data in (first, second, view, small, large, huge):
        await buffer.write(data)
    await asyncio.wait_for(buffer.flush(), 60)
    assert handed[0] is first and handed[1] is second and handed[3] is large
    assert handed[2] == bytes(view) + small
    assert [len(piece) for piece in handed[4:]] == [SFTP_PIECE, 512 * KIB]
    everything = first + second + bytes(view) + small + large + huge
    assert b"".join(handed) == everything
    finished = await core.uploads.finish(CUSTOMER, "CASE-1", upload.id)
    record = await core.repo.get_file("CASE-1", finished.file_id)
    assert record is not None and record.sha256 == sha256(everything)
