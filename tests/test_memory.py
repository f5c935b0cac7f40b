"""The per-upload memory figures of eftgw/memory.py match the libraries they describe (asyncio, aiohttp)."""

from __future__ import annotations

import asyncio
import asyncio.constants
import asyncio.selector_events
import asyncio.sslproto
from typing import Any

import pytest
from aiohttp import web
from aiohttp.streams import StreamReader

from eftgw.memory import (
    LARGEST_CHUNK,
    PER_UPLOAD,
    READ_BUFSIZE,
    RECEIVE_HELD,
    TLS_INCOMING,
    TLS_READ_BUFFER,
    TRANSPORT_READ,
    MiB,
    pipeline_held,
    writer_share,
)
from eftgw.server import app_runner
from eftgw.storage.s3_writer import WRITER_MEMORY, S3Writer

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
    """64 MiB per upload: 1.75 MiB of receive buffers, two blocks of 2 MiB plus a 512 KiB chunk each, and
    57.25 MiB for the S3 writer's parts."""
    assert RECEIVE_HELD / MiB == 1.75
    assert pipeline_held(S3Writer.block_size) == RECEIVE_HELD + 5 * MiB
    assert WRITER_MEMORY == writer_share(S3Writer.block_size) == PER_UPLOAD - 6 * MiB - 768 * 1024
