"""The aiohttp and asyncio internals eftgw.http.aiohttp_compat relies on exist and behave as it assumes (see
its docstring): an upgrade that changes one fails here instead of corrupting uploads. Real loopback TCP and
TLS connections throughout."""

from __future__ import annotations

import asyncio
import collections
import io
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web, web_protocol

from eftgw.http import aiohttp_compat
from eftgw.tlsutil import ensure_self_signed, server_context
from tests.support import client_ssl, free_port

MiB = 1024 * 1024


@pytest.fixture
def tls(tmp_path: Path) -> ssl.SSLContext:
    cert, key = ensure_self_signed(tmp_path / "tls", "127.0.0.1")
    return server_context(cert, key)


def test_the_installed_aiohttp_is_the_tested_one() -> None:
    """The receive path is used only with the aiohttp version whose internals these tests checked."""
    assert aiohttp.__version__ in aiohttp_compat.TESTED_VERSIONS


class _Switching(asyncio.BufferedProtocol):
    """Receives into a buffer of its own while switched in; records what arrived which way."""

    def __init__(self) -> None:
        self.buffer = bytearray(64 * 1024)  # never handed out empty: TLS would take that for its end
        self.filled = 0
        self.done = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        if self.filled >= 1000 and not self.done.done():
            self.done.set_result(None)


class _Plain(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.made = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.data += data


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_the_servers_transports_switch_to_a_buffered_protocol_and_back(
    scheme: str, tls: ssl.SSLContext
) -> None:
    """asyncio's socket and TLS server transports are the ones the compat module accepts; switched to a
    BufferedProtocol they hand it the bytes through get_buffer/buffer_updated, and switched back to a
    plain protocol, through data_received again (nothing lost or duplicated on the way)."""
    loop = asyncio.get_running_loop()
    plain = _Plain()
    server = await loop.create_server(lambda: plain, "127.0.0.1", 0, ssl=tls if scheme == "tls" else None)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ssl() if scheme == "tls" else None
    )
    try:
        await plain.made
        transport = plain.transport
        assert transport is not None
        assert type(transport) in aiohttp_compat.SWITCHABLE_TRANSPORTS
        writer.write(b"before")
        for _ in range(600):
            if plain.data:
                break
            await asyncio.sleep(0.01)
        assert plain.data == b"before"
        switching = _Switching()
        transport.set_protocol(switching)
        data = os.urandom(1000)
        writer.write(data)
        await asyncio.wait_for(switching.done, 30)
        assert switching.buffer[: switching.filled] == data and plain.data == b"before"
        transport.pause_reading()
        transport.set_protocol(plain)
        writer.write(b"after")
        await writer.drain()
        await asyncio.sleep(0.2)
        assert plain.data == b"before"  # paused: nothing read
        transport.resume_reading()
        for _ in range(600):
            if plain.data == b"beforeafter":
                break
            await asyncio.sleep(0.01)
        assert plain.data == b"beforeafter"
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


Seen = Callable[[web.Request], Awaitable[None]]


@pytest.fixture
async def app_server(tls: ssl.SSLContext) -> AsyncIterator[Callable[[Seen], Awaitable[str]]]:
    """An aiohttp server (as eftgw runs it: handler_cancellation off, 256 KiB read_bufsize) on loopback TLS
    whose PUT handler runs a check given by the test; returns its URL."""
    runners: list[web.AppRunner] = []

    async def start(check: Seen) -> str:
        async def handle(request: web.Request) -> web.Response:
            await check(request)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_put("/", handle)
        runner = web.AppRunner(app, handler_cancellation=False, read_bufsize=256 * 1024)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
        return f"https://127.0.0.1:{port}/"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_a_request_handler_has_the_internals_the_takeover_reads(
    app_server: Callable[[Seen], Awaitable[str]],
) -> None:
    """A live handler has the attributes the compat module reads, of the kinds it assumes; new_parser builds
    a parser of the handler's own class that parses a request; takeover_refusal accepts the body."""
    seen: dict[str, object] = {}

    async def check(request: web.Request) -> None:
        handler = request.protocol
        assert isinstance(handler._messages, collections.deque) and not handler._messages
        assert handler._reading_paused is False and handler._buffer_paused is False
        assert handler._upgraded is False and handler._payload_parser is None
        assert isinstance(handler._read_bufsize, int) and isinstance(handler._manager._kwargs, dict)
        assert handler._manager._kwargs["read_bufsize"] == 256 * 1024
        assert type(handler._parser) is web_protocol.HttpRequestParser  # type: ignore[attr-defined]
        assert isinstance(request.content.total_bytes, int)
        seen["refusal"] = aiohttp_compat.takeover_refusal(request)
        parser = aiohttp_compat.new_parser(handler)
        assert type(parser) is type(handler._parser)
        messages, upgraded, tail = parser.feed_data(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert len(messages) == 1 and messages[0][0].path == "/x" and not upgraded and tail == b""
        seen["body"] = await request.content.read()

    url = await app_server(check)
    body = os.urandom(4 * MiB)
    async with aiohttp.ClientSession() as s, s.put(url, data=io.BytesIO(body), ssl=client_ssl()) as r:
        assert r.status == 200
    assert seen["refusal"] is None and seen["body"] == body


async def test_taking_the_buffered_body_also_takes_what_a_paused_parser_held(
    app_server: Callable[[Seen], Awaitable[str]],
) -> None:
    """A handler that waits until aiohttp paused reading (its payload buffer full, the parser holding the
    rest of the last read unparsed) takes the buffered bytes with take_buffered: the parser's held bytes come
    out too (total_bytes counts them all), reading is resumed, and the rest of the body read after them
    makes the body exactly."""
    seen: dict[str, object] = {}

    async def check(request: web.Request) -> None:
        handler = request.protocol
        for _ in range(600):
            if handler._reading_paused:
                break
            await asyncio.sleep(0.01)
        seen["paused"] = handler._reading_paused
        taken, refusal = aiohttp_compat.take_buffered(request)
        seen["refusal"] = refusal
        seen["counted"] = request.content.total_bytes == sum(len(t) for t in taken)
        seen["resumed"] = not handler._reading_paused
        seen["body"] = b"".join(taken) + await request.content.read()

    url = await app_server(check)
    body = os.urandom(8 * MiB)
    async with aiohttp.ClientSession() as s, s.put(url, data=io.BytesIO(body), ssl=client_ssl()) as r:
        assert r.status == 200
    assert seen["paused"] is True and seen["refusal"] is None
    assert seen["counted"] is True and seen["resumed"] is True
    assert seen["body"] == body
