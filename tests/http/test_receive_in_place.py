"""Upload bodies received by the connection straight into the pipeline's blocks (eftgw.http.receive), over
real TCP and TLS connections from a hand-written HTTP/1.1 client: the bytes stored, the connection's next
and pipelined requests, a client that goes away or stalls, a checksum mismatch, backpressure, and the
bodies that still go through aiohttp."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from eftgw import metrics
from eftgw.http.receive import BlockReceiver
from eftgw.ingest import Ingest
from eftgw.model import SYSTEM
from tests.support import (
    RunningGateway,
    client_ssl,
    http_session,
    running_gateway,
    tus_headers,
    writer_block_size,
)

MiB = 1024 * 1024

pytestmark = pytest.mark.timeout(300)


def bodies(path: str, reason: str = "") -> float:
    labels = {"path": path, "reason": reason}
    value = metrics.REGISTRY.get_sample_value("eftgw_http_upload_bodies_total", labels)
    return value or 0.0


@pytest.fixture(params=["https", "http"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """An in-process gateway on loopback, over TLS (as ``eftgw serve`` runs) and over plain HTTP."""
    async with running_gateway(tmp_path / "gw", tls="on" if request.param == "https" else "off") as running:
        await running.gateway.cases.open(SYSTEM, "C-1")
        yield running


class Connection:
    """One keep-alive HTTP/1.1 connection written by hand (TLS if the gateway's URL says https)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, gw: RunningGateway) -> Connection:
        host, port = gw.url.split("//")[1].split(":")
        tls = client_ssl() if gw.url.startswith("https") else None
        reader, writer = await asyncio.open_connection(host, int(port), ssl=tls, limit=4 * MiB)
        return cls(reader, writer)

    @staticmethod
    def head_of(method: str, path: str, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 120)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body

    async def closed_by_server(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 60) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.transport.abort()


async def new_upload(gw: RunningGateway, length: int) -> str:
    async with (
        http_session() as s,
        s.post(gw.uploads_url("C-1"), headers=tus_headers(gw.token("C-1"), Upload_Length=str(length))) as r,
    ):
        assert r.status == 201
        return "/" + r.headers["Location"].split("/", 3)[3]


def patch_head(gw: RunningGateway, path: str, offset: int, size: int, **extra: str) -> bytes:
    headers = tus_headers(
        gw.token("C-1"),
        Upload_Offset=str(offset),
        Content_Type="application/offset+octet-stream",
        Content_Length=str(size),
        **extra,
    )
    return Connection.head_of("PATCH", path, headers)


def head_request(gw: RunningGateway, path: str) -> bytes:
    return Connection.head_of("HEAD", path, tus_headers(gw.token("C-1")))


async def offset_of(gw: RunningGateway, path: str) -> int:
    async with http_session() as s, s.head(gw.url + path, headers=tus_headers(gw.token("C-1"))) as r:
        assert r.status == 200
        return int(r.headers["Upload-Offset"])


async def offset_becomes(gw: RunningGateway, path: str, expected: int) -> None:
    """Waits (bounded) for the upload's durable offset to be ``expected``."""
    for _ in range(600):
        if await offset_of(gw, path) == expected:
            return
        await asyncio.sleep(0.1)
    assert await offset_of(gw, path) == expected


async def connections_end(gw: RunningGateway) -> None:
    """Waits (bounded) until aiohttp forgot every connection: its ``connection_lost`` ran for each."""
    server = gw.runner.server
    assert server is not None
    for _ in range(600):
        if not server.connections:
            return
        await asyncio.sleep(0.1)
    assert server.connections == []


async def stored_sha256(gw: RunningGateway) -> str:
    (record,) = await gw.gateway.repo.list_files("C-1")
    return record.sha256


async def test_a_body_is_received_into_blocks_and_a_pipelined_request_behind_it_is_answered(
    node: RunningGateway,
) -> None:
    """Two PATCHes of 5 MiB + 123 bytes on one keep-alive connection, each with a HEAD pipelined right behind
    its body in the same send: both bodies are received into blocks (not through aiohttp), each HEAD is
    answered with the offset after its PATCH, and the file holds exactly the bytes sent."""
    part = 5 * MiB + 123
    data = os.urandom(2 * part)
    path = await new_upload(node, len(data))
    before = bodies("blocks")
    conn = await Connection.open(node)
    try:
        for index in range(2):
            body = data[index * part : (index + 1) * part]
            await conn.send(patch_head(node, path, index * part, part) + body + head_request(node, path))
            status, headers, _ = await conn.response()
            assert status == 204 and headers["upload-offset"] == str((index + 1) * part)
            status, headers, _ = await conn.response()
            assert status == 200 and headers["upload-offset"] == str((index + 1) * part)
    finally:
        conn.close()
    assert bodies("blocks") == before + 2
    assert await stored_sha256(node) == hashlib.sha256(data).hexdigest()


async def test_a_body_sent_in_small_pieces_after_its_headers_is_stored_exactly(node: RunningGateway) -> None:
    """Headers with the first 1000 bytes of body (aiohttp holds them when the handler starts), then the rest
    in pieces of odd sizes with pauses: the blocks start with aiohttp's bytes and the file is exact; a
    second request on the connection works."""
    data = os.urandom(3 * MiB + 7)
    path = await new_upload(node, len(data))
    before = bodies("blocks")
    conn = await Connection.open(node)
    try:
        await conn.send(patch_head(node, path, 0, len(data)) + data[:1000])
        await asyncio.sleep(0.2)
        sent = 1000
        for size in (1, 4093, 65537, 1 * MiB + 3):
            await conn.send(data[sent : sent + size])
            sent += size
            await asyncio.sleep(0.05)
        await conn.send(data[sent:])
        status, headers, _ = await conn.response()
        assert status == 204 and headers["upload-offset"] == str(len(data))
        await conn.send(head_request(node, path))
        assert (await conn.response())[0] == 200
    finally:
        conn.close()
    assert bodies("blocks") == before + 1
    assert await stored_sha256(node) == hashlib.sha256(data).hexdigest()


async def test_a_client_that_goes_away_mid_body_keeps_what_arrived(node: RunningGateway) -> None:
    """A client sends 3 MiB + 5 of an 8 MiB PATCH and closes its connection: the 3 MiB + 5 that arrived are
    kept (the durable offset), and aiohttp's connection_lost ran (it forgot the connection)."""
    path = await new_upload(node, 8 * MiB)
    data = os.urandom(3 * MiB + 5)
    conn = await Connection.open(node)
    await conn.send(patch_head(node, path, 0, 8 * MiB) + data)
    await asyncio.sleep(0.5)
    conn.writer.close()
    await offset_becomes(node, path, len(data))
    await connections_end(node)
    # the rest goes on a new connection; the file is whole
    rest = os.urandom(8 * MiB - len(data))
    conn = await Connection.open(node)
    try:
        await conn.send(patch_head(node, path, len(data), len(rest)) + rest)
        assert (await conn.response())[0] == 204
    finally:
        conn.close()
    assert await stored_sha256(node) == hashlib.sha256(data + rest).hexdigest()


async def test_a_body_with_a_checksum_cut_off_keeps_nothing(node: RunningGateway) -> None:
    """A PATCH with an Upload-Checksum whose client goes away after 3 MiB keeps nothing (its checksum
    cannot be checked): a PATCH of the whole file at offset 0 afterwards (it takes the upload's lock after
    the cut one let go) is accepted, and the file is exactly its bytes."""
    path = await new_upload(node, 8 * MiB)
    conn = await Connection.open(node)
    digest = "sha1 " + base64.b64encode(hashlib.sha1(b"x").digest()).decode()
    await conn.send(patch_head(node, path, 0, 8 * MiB, Upload_Checksum=digest) + os.urandom(3 * MiB))
    await asyncio.sleep(0.5)
    conn.close()
    await connections_end(node)
    data = os.urandom(8 * MiB)
    conn = await Connection.open(node)
    try:
        await conn.send(patch_head(node, path, 0, len(data)) + data)
        status, headers, _ = await conn.response()
        assert status == 204 and headers["upload-offset"] == str(len(data))
    finally:
        conn.close()
    assert await stored_sha256(node) == hashlib.sha256(data).hexdigest()


async def test_a_checksum_mismatch_keeps_nothing_and_the_connection_goes_on(node: RunningGateway) -> None:
    """A 3 MiB PATCH whose Upload-Checksum does not match is refused with 460 and nothing is kept; the next
    request on the same connection is answered."""
    path = await new_upload(node, 8 * MiB)
    data = os.urandom(3 * MiB)
    wrong = "sha1 " + base64.b64encode(hashlib.sha1(data + b"!").digest()).decode()
    before = bodies("blocks")
    conn = await Connection.open(node)
    try:
        await conn.send(patch_head(node, path, 0, len(data), Upload_Checksum=wrong) + data)
        assert (await conn.response())[0] == 460
        await conn.send(head_request(node, path))
        status, headers, _ = await conn.response()
        assert status == 200 and headers["upload-offset"] == "0"
    finally:
        conn.close()
    assert bodies("blocks") == before + 1


async def test_a_stalled_body_taken_over_by_a_newer_request_is_answered_and_its_connection_goes_on(
    node: RunningGateway,
) -> None:
    """A client sends 3 MiB of a 6 MiB PATCH and stalls; a newer PATCH on another connection takes the upload
    over: the stalled request commits its 3 MiB and is answered 423 while its body is still unfinished. Its
    client then sends the rest of that body (read and dropped) and a HEAD on the same connection, which is
    answered."""
    path = await new_upload(node, 6 * MiB)
    data = os.urandom(3 * MiB)
    stalled = await Connection.open(node)
    other = await Connection.open(node)
    try:
        await stalled.send(patch_head(node, path, 0, 6 * MiB) + data)
        await asyncio.sleep(0.5)
        await other.send(patch_head(node, path, 0, 1) + b"z")
        status, _, _ = await stalled.response()
        assert status == 423
        assert (await other.response())[0] == 409  # the stalled request's 3 MiB were committed first
        assert await offset_of(node, path) == len(data)
        await stalled.send(os.urandom(3 * MiB) + head_request(node, path))
        status, headers, _ = await stalled.response()
        assert status == 200 and headers["upload-offset"] == str(len(data))
    finally:
        stalled.close()
        other.close()


async def test_while_both_blocks_are_busy_the_connection_is_not_read(
    node: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the pipeline's hashing and writing held back, a client's 64 MiB PATCH stops being read: the
    gateway's transport is paused once the block behind the held one is full, and the connection delivered
    no more than those two blocks; released, the whole body is stored."""
    release = asyncio.Event()
    consuming = asyncio.Event()
    original = Ingest._consume

    async def held_back(*args: Any) -> None:
        consuming.set()
        await release.wait()
        await original(*args)

    monkeypatch.setattr(Ingest, "_consume", staticmethod(held_back))
    data = os.urandom(64 * MiB)
    path = await new_upload(node, len(data))
    conn = await Connection.open(node)
    try:
        conn.writer.write(patch_head(node, path, 0, len(data)) + data)
        await asyncio.wait_for(consuming.wait(), 60)
        server = node.runner.server
        assert server is not None
        (handler,) = server.connections
        transport = handler.transport
        assert transport is not None
        for _ in range(600):  # the second block fills, then reading stops
            if not transport.is_reading():
                break
            await asyncio.sleep(0.05)
        assert not transport.is_reading()
        await asyncio.sleep(1)
        assert not transport.is_reading()
        # what the connection delivered: the block held back and the one received behind it, no more
        receiver = transport.get_protocol()
        assert isinstance(receiver, BlockReceiver)
        assert len(data) - receiver.unreceived <= 2 * writer_block_size(node)
        release.set()
        await conn.writer.drain()
        status, headers, _ = await conn.response()
        assert status == 204 and headers["upload-offset"] == str(len(data))
    finally:
        release.set()
        conn.close()
    assert await stored_sha256(node) == hashlib.sha256(data).hexdigest()


async def test_a_chunked_body_goes_through_aiohttp(node: RunningGateway) -> None:
    """A PATCH with a chunked body (no Content-Length) is read through aiohttp, stored exactly, and counted
    as such; the connection's next request is answered."""
    data = os.urandom(3 * MiB + 11)
    path = await new_upload(node, len(data))
    before = bodies("chunks", "no_length")
    headers = tus_headers(
        node.token("C-1"),
        Upload_Offset="0",
        Content_Type="application/offset+octet-stream",
        Transfer_Encoding="chunked",
    )
    pieces = [data[i : i + MiB] for i in range(0, len(data), MiB)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    conn = await Connection.open(node)
    try:
        await conn.send(Connection.head_of("PATCH", path, headers) + chunked)
        status, response_headers, _ = await conn.response()
        assert status == 204 and response_headers["upload-offset"] == str(len(data))
        await conn.send(head_request(node, path))
        assert (await conn.response())[0] == 200
    finally:
        conn.close()
    assert bodies("chunks", "no_length") == before + 1
    assert await stored_sha256(node) == hashlib.sha256(data).hexdigest()


async def test_a_body_aiohttp_received_whole_with_a_request_behind_it_goes_through_aiohttp(
    node: RunningGateway,
) -> None:
    """A small PATCH sent with a HEAD right behind it, both before the gateway reads: aiohttp parsed the
    whole body and the next request already, so the body is read through aiohttp; both are answered."""
    data = os.urandom(5000)
    path = await new_upload(node, len(data))
    before = bodies("chunks", "received")
    conn = await Connection.open(node)
    try:
        await conn.send(patch_head(node, path, 0, len(data)) + data + head_request(node, path))
        status, headers, _ = await conn.response()
        assert status == 204 and headers["upload-offset"] == str(len(data))
        status, headers, _ = await conn.response()
        assert status == 200 and headers["upload-offset"] == str(len(data))
    finally:
        conn.close()
    assert bodies("chunks", "received") == before + 1
    assert await stored_sha256(node) == hashlib.sha256(data).hexdigest()


async def test_creation_with_upload_receives_its_body_into_blocks(node: RunningGateway) -> None:
    """A POST with a 4 MiB body (creation-with-upload) is received into blocks and stored exactly."""
    data = os.urandom(4 * MiB + 1)
    before = bodies("blocks")
    headers = tus_headers(
        node.token("C-1"),
        Upload_Length=str(len(data)),
        Content_Type="application/offset+octet-stream",
        Content_Length=str(len(data)),
    )
    conn = await Connection.open(node)
    try:
        await conn.send(Connection.head_of("POST", "/api/v1/cases/C-1/uploads", headers) + data)
        status, response_headers, _ = await conn.response()
        assert status == 201 and response_headers["upload-offset"] == str(len(data))
    finally:
        conn.close()
    assert bodies("blocks") == before + 1
    assert await stored_sha256(node) == hashlib.sha256(data).hexdigest()
