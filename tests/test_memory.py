"""The per-upload memory figures of eftgw/memory.py match the libraries they describe (asyncio, aiohttp)."""

from __future__ import annotations

import asyncio
import asyncio.constants
import asyncio.selector_events
import asyncio.sslproto
import inspect
from pathlib import Path
from typing import Any

import asyncssh.sftp
import pytest
from aiohttp import web
from aiohttp.streams import StreamReader

from eftgw.memory import (
    HTTP,
    LARGEST_CHUNK,
    PER_UPLOAD,
    READ_BUFSIZE,
    RECEIVE_HELD,
    SFTP,
    SFTP_CHANNEL_PACKET,
    SFTP_HANDLE_HELD,
    SFTP_PIECE,
    SFTP_RECEIVE_HELD,
    SFTP_REQUEST,
    SFTP_SOCKET_READ,
    SFTP_WINDOW,
    SFTP_WRITE_BUFFER,
    TLS_INCOMING,
    TLS_READ_BUFFER,
    TRANSPORT_READ,
    KiB,
    MiB,
    pipeline_held,
    writer_share,
)
from eftgw.server import app_runner
from eftgw.sftp import asyncssh_compat, buffer
from eftgw.sftp.fs import SftpContext
from eftgw.sftp.server import SftpService
from eftgw.storage.filesystem import BUFFERS, DIRECT_ALIGN, DIRECT_BUFFER, FilesystemStore, FilesystemWriter
from eftgw.storage.s3_parts import part_size
from eftgw.storage.s3_writer import (
    BLOCK,
    SFTP_BLOCK,
    WRITER_MEMORY,
    S3Writer,
    block_for,
    inflight_for,
    memory_for,
)

pytestmark = pytest.mark.once  # no backend involved


def test_the_transport_figures_are_asyncios() -> None:
    """asyncio reads a socket and TLS plaintext 256 KiB at a time, and its TLS layer stops reading the socket
    once 256 KiB of ciphertext wait (so it holds less than that plus one read): the figures the per-upload
    count is built on. A Python that changes them fails here, not silently in production."""
    assert asyncio.selector_events._SelectorTransport.max_size == TRANSPORT_READ  # type: ignore[attr-defined]
    assert asyncio.sslproto.SSLProtocol.max_size == TRANSPORT_READ
    assert asyncio.constants.FLOW_CONTROL_HIGH_WATER_SSL_READ * 1024 == TRANSPORT_READ
    assert TLS_INCOMING == 2 * TRANSPORT_READ == LARGEST_CHUNK and TLS_READ_BUFFER == TRANSPORT_READ


async def test_aiohttp_pauses_the_socket_past_twice_the_read_buffer_size() -> None:
    """The HTTPS server gives aiohttp ``READ_BUFSIZE``, and aiohttp's body stream asks its protocol to pause
    reading once it holds more than twice that (after the piece that crossed the mark): 1 MiB at most with
    the largest piece TLS hands over, as ``RECEIVE_HELD`` counts it."""
    runner: Any = app_runner(web.Application())
    assert runner._kwargs["read_bufsize"] == READ_BUFSIZE

    class Protocol:
        paused = False

        def pause_reading(self) -> None:
            self.paused = True

    protocol = Protocol()
    stream = StreamReader(protocol, READ_BUFSIZE, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    assert stream.get_read_buffer_limits() == (READ_BUFSIZE, 2 * READ_BUFSIZE)
    stream.feed_data(bytes(2 * READ_BUFSIZE))
    assert not protocol.paused
    stream.feed_data(bytes(LARGEST_CHUNK))
    assert protocol.paused
    assert 2 * READ_BUFSIZE + LARGEST_CHUNK + TLS_INCOMING + TLS_READ_BUFFER == RECEIVE_HELD


def test_an_s3_upload_leaves_its_writer_what_the_buffers_and_blocks_do_not_hold() -> None:
    """64 MiB per upload: 1.75 MiB of receive buffers, two blocks of 4 MiB plus a 512 KiB chunk each, and
    53.25 MiB for the S3 writer's parts."""
    assert RECEIVE_HELD / MiB == 1.75
    assert S3Writer.block_size == BLOCK == block_for(HTTP) == 4 * MiB
    assert pipeline_held(S3Writer.block_size) == RECEIVE_HELD + 9 * MiB
    assert WRITER_MEMORY == writer_share(S3Writer.block_size) == PER_UPLOAD - 10 * MiB - 768 * 1024


def test_the_sftp_figures_are_the_sessions_limits() -> None:
    """What ``eftgw.memory`` counts for an SFTP upload are the limits the SFTP side runs with: the channel
    window and packet size the service offers (and the receive memory's pause mark per connection), the
    write buffer's capacity and piece, the connection's socket read, and the largest request asyncssh takes.
    A change to one of them fails here, not silently in production."""
    defaults = inspect.signature(SftpService.__init__).parameters
    assert defaults["window"].default == SFTP_WINDOW == 8 * MiB
    assert defaults["max_packet"].default == SFTP_CHANNEL_PACKET == 256 * KiB
    assert SftpContext.__dataclass_fields__["buffer_capacity"].default == SFTP_WRITE_BUFFER
    assert inspect.signature(buffer.BufferedUpload).parameters["capacity"].default == SFTP_WRITE_BUFFER
    assert buffer.PIECE == SFTP_PIECE
    assert asyncssh_compat.SOCKET_READ == SFTP_SOCKET_READ
    assert asyncssh.sftp.MAX_SFTP_PACKET_LEN == SFTP_REQUEST
    assert asyncssh_compat.MAX_REQUEST <= SFTP_REQUEST  # what the gateway advertises (limits@openssh.com)
    assert 9 * MiB == SFTP_RECEIVE_HELD
    assert 16 * MiB + 2 * KiB == SFTP_HANDLE_HELD


def test_each_transport_leaves_its_writer_what_fits_in_64_mib() -> None:
    """For each transport, what it holds in front of the pipeline, the pipeline's two blocks and the writer's
    share add up to 64 MiB: HTTPS leaves S3's writer 53.25 MiB (two blocks of 4 MiB), SFTP 33 MiB less 2 KiB
    (its session's 9 MiB, its handle's 16 MiB and 2 KiB, two blocks of 2 MiB plus a 1 MiB piece each). The
    SFTP share keeps 16 and 32 MiB parts in memory, as the HTTPS share does, and spools from 64 MiB parts, at
    the same part number; every part size stays within 64 MiB with what is outside the writer."""
    assert writer_share(BLOCK, HTTP) == WRITER_MEMORY == 53 * MiB + 256 * KiB
    assert block_for(SFTP) == SFTP_BLOCK == 2 * MiB
    assert pipeline_held(SFTP_BLOCK, SFTP) == 31 * MiB + 2 * KiB
    assert writer_share(SFTP_BLOCK, SFTP) == 33 * MiB - 2 * KiB
    for via in (HTTP, SFTP):
        block = block_for(via)
        share = writer_share(block, via)
        assert pipeline_held(block, via) + share == PER_UPLOAD == 64 * MiB
        assert share >= 32 * MiB
        for number in range(1, 10_001):
            assert memory_for(part_size(number), share) + pipeline_held(block, via) <= PER_UPLOAD
        assert memory_for(32 * MiB, share) == share and memory_for(64 * MiB, share) == 0
    sftp = writer_share(SFTP_BLOCK, SFTP)
    assert inflight_for(16 * MiB, sftp) == 2 and inflight_for(32 * MiB, sftp) == 1
    assert inflight_for(16 * MiB, WRITER_MEMORY) == 3 and inflight_for(32 * MiB, WRITER_MEMORY) == 1


async def test_filesystem_writers_keep_under_a_disk_unit_and_share_the_nodes_aligned_buffers(
    tmp_path: Path,
) -> None:
    """A filesystem writer keeps under one 4 KiB disk unit between its direct writes, whatever the blocks
    (here 5 MiB in one, then 9 MiB over three writers in turn): the aligned buffer a write copies into is
    taken from the node's ``BUFFERS`` and given back, so writers one after the other reuse one buffer of
    ``DIRECT_BUFFER`` (2 MiB) instead of each keeping its own."""
    store = FilesystemStore(tmp_path / "store")
    await store.open()
    made = BUFFERS.made
    for n in range(3):
        await store.create_staging(f"uploads/C-1/u{n}")
        writer = await store.open_writer(f"uploads/C-1/u{n}", 0)
        assert isinstance(writer, FilesystemWriter) and writer.direct
        await writer.write_chunks([bytes(5 * MiB + 1000)])
        assert writer._buffer is None and len(writer._carry) == 1000 < DIRECT_ALIGN
        await writer.write_chunks([bytes(3 * MiB + 5)])
        assert len(writer._carry) == 1005
        await writer.commit()
        await writer.close()
    assert BUFFERS.made - made <= 1 and BUFFERS.free >= 1
    assert DIRECT_BUFFER == 2 * MiB == FilesystemWriter.block_size
