"""An upload body that brings no byte for ``EFTGW_BODY_IDLE_TIMEOUT`` seconds ends its connection (eftgw.http.
receive): what arrived is kept, the upload resumes, and what the request held (pipeline blocks, S3 parts
reserved in the node's upload budget) is given back, so stalled clients cannot starve the others. A slow body
that keeps sending is never cut. Over real TCP and TLS connections from a hand-written HTTP/1.1 client."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eftgw import metrics
from eftgw.model import SYSTEM
from eftgw.storage.s3 import S3Store
from eftgw.storage.s3_writer import BLOCK
from tests.http.test_receive_in_place import (
    Connection,
    MiB,
    new_upload,
    offset_becomes,
    offset_of,
    patch_head,
    stored_sha256,
)
from tests.services import fresh_bucket
from tests.support import RunningGateway, running_gateway, tus_headers

IDLE = 1.5  # seconds: short for the tests; every wait below is bounded far beyond it

pytestmark = pytest.mark.timeout(300)


def stalls() -> float:
    return metrics.REGISTRY.get_sample_value("eftgw_http_body_stalls_total") or 0.0


@pytest.fixture(params=["https", "http"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    tls = "on" if request.param == "https" else "off"
    async with running_gateway(tmp_path / "gw", tls=tls, body_idle_timeout=IDLE) as running:
        await running.gateway.cases.open(SYSTEM, "C-1")
        yield running


async def resume_and_finish(gw: RunningGateway, path: str, sent: bytes, length: int) -> None:
    """Send the rest of the upload from its offset on a new connection; the file is ``sent`` + the rest."""
    offset = await offset_of(gw, path)
    assert offset == len(sent)
    rest = os.urandom(length - offset)
    conn = await Connection.open(gw)
    try:
        await conn.send(patch_head(gw, path, offset, len(rest)) + rest)
        status, headers, _ = await conn.response()
        assert status == 204 and headers["upload-offset"] == str(length)
    finally:
        conn.close()
    assert await stored_sha256(gw) == hashlib.sha256(sent + rest).hexdigest()


async def test_a_stalled_body_loses_its_connection_keeps_what_arrived_and_resumes(
    node: RunningGateway,
) -> None:
    """A client sends 3 MiB + 5 of an 8 MiB PATCH (received into blocks) and then nothing: after the idle
    timeout the gateway closes the connection without an answer (a tus client resumes after a network
    error), keeps the 3 MiB + 5 that arrived, and counts the stall; the upload then finishes from there."""
    path = await new_upload(node, 8 * MiB)
    sent = os.urandom(3 * MiB + 5)
    before = stalls()
    conn = await Connection.open(node)
    try:
        await conn.send(patch_head(node, path, 0, 8 * MiB) + sent)
        assert await conn.closed_by_server()  # (bounded: 60 s)
    finally:
        conn.close()
    await offset_becomes(node, path, len(sent))
    assert stalls() == before + 1
    await resume_and_finish(node, path, sent, 8 * MiB)


async def test_a_stalled_chunked_body_read_through_aiohttp_is_cut_the_same_way(node: RunningGateway) -> None:
    """A chunked PATCH (read through aiohttp, not into blocks) that sends 1 MiB + 7 and then nothing loses its
    connection after the idle timeout, keeps what arrived, and resumes."""
    path = await new_upload(node, 4 * MiB)
    sent = os.urandom(MiB + 7)
    before = stalls()
    headers = tus_headers(
        node.token("C-1"),
        Upload_Offset="0",
        Content_Type="application/offset+octet-stream",
        Transfer_Encoding="chunked",
    )
    conn = await Connection.open(node)
    try:
        await conn.send(Connection.head_of("PATCH", path, headers) + b"%x\r\n%s\r\n" % (len(sent), sent))
        assert await conn.closed_by_server()
    finally:
        conn.close()
    await offset_becomes(node, path, len(sent))
    assert stalls() == before + 1
    await resume_and_finish(node, path, sent, 4 * MiB)


async def test_a_slow_body_that_keeps_sending_is_not_cut(node: RunningGateway) -> None:
    """A PATCH whose 1.25 MiB arrive in 64 KiB pieces a quarter of a second apart takes 5 s, more than three
    idle timeouts, to fill less than one 2 MiB block: it is not cut (the timeout measures silence, not how
    long a block takes) and is answered 204 with every byte stored."""
    data = os.urandom(20 * 64 * 1024)
    path = await new_upload(node, len(data))
    before = stalls()
    conn = await Connection.open(node)
    try:
        await conn.send(patch_head(node, path, 0, len(data)))
        for at in range(0, len(data), 64 * 1024):
            await conn.send(data[at : at + 64 * 1024])
            await asyncio.sleep(0.25)
        status, headers, _ = await conn.response()
        assert status == 204 and headers["upload-offset"] == str(len(data))
    finally:
        conn.close()
    assert stalls() == before
    assert await stored_sha256(node) == hashlib.sha256(data).hexdigest()


@pytest.mark.once  # S3 with a small budget whatever the pass's backend
async def test_stalled_bodies_give_their_s3_budget_back_to_the_uploads_waiting_for_it(tmp_path: Path) -> None:
    """On S3 with a 32 MiB upload budget (two 16 MiB parts), two clients each send a block and 1 MiB of a
    PATCH (5 MiB: the first block went to a part, the second waits for its bytes) and stall: each holds a
    part's room, so a third upload's body waits for the budget. Once the stalled bodies are cut (an idle
    timeout of 5 s here, so that the wait is seen first) their parts are given back, the third upload
    finishes, and the two stalled ones kept what arrived."""
    s3 = {key.removeprefix("EFTGW_").lower(): value for key, value in fresh_bucket("idle-budget").items()}
    before = stalls()
    async with running_gateway(
        tmp_path / "gw", tls="off", storage="s3", upload_memory=32 * MiB, body_idle_timeout=5.0, **s3
    ) as gw:
        await gw.gateway.cases.open(SYSTEM, "C-1")
        store = gw.gateway.store
        assert isinstance(store, S3Store)
        budget = store.budget
        stalled = [await new_upload(gw, 2 * BLOCK) for _ in range(2)]
        sent = [os.urandom(BLOCK + MiB) for _ in stalled]  # a whole block reaches the writer
        conns = [await Connection.open(gw) for _ in stalled]
        try:
            for conn, path, part in zip(conns, stalled, sent, strict=True):
                await conn.send(patch_head(gw, path, 0, 2 * BLOCK) + part)
            for _ in range(600):  # both hold a part's room
                if budget.used == 32 * MiB:
                    break
                await asyncio.sleep(0.05)
            assert budget.used == 32 * MiB
            data = os.urandom(20 * MiB)
            path = await new_upload(gw, len(data))
            third = await Connection.open(gw)
            try:
                third.writer.write(patch_head(gw, path, 0, len(data)) + data)
                for _ in range(600):  # its first part waits for room while the stalled bodies hold it
                    if budget.waiting:
                        break
                    await asyncio.sleep(0.01)
                assert budget.waiting == 1 and stalls() == before
                status, headers, _ = await third.response()  # (bounded: 120 s)
                assert status == 204 and headers["upload-offset"] == str(len(data))
            finally:
                third.close()
            assert budget.peak <= 32 * MiB
            for conn in conns:
                assert await conn.closed_by_server()
            assert stalls() == before + 2
        finally:
            for conn in conns:
                conn.close()
        for path, part in zip(stalled, sent, strict=True):
            await offset_becomes(gw, path, len(part))
        for _ in range(600):
            if budget.used == 0:
                break
            await asyncio.sleep(0.05)
        assert budget.used == 0 and budget.waiting == 0
        files = {f.size: f.sha256 for f in await gw.gateway.repo.list_files("C-1")}
        assert files == {len(data): hashlib.sha256(data).hexdigest()}
