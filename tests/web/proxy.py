"""A TCP proxy on loopback between a browser and the gateway: it slows uploads down and can cut the network.

Browsers driven without DevTools (Firefox over WebDriver BiDi, WebKit over classic WebDriver) cannot all
throttle or go offline; this proxy does both the real way. It forwards bytes (TLS passes through untouched),
holds the browser-to-gateway direction to ``rate`` bytes per second in total, and counts those bytes.
``cut()`` resets every open connection, and until ``restore()`` every new one is reset as it arrives (and
counted), as when the link to the gateway is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

PIECE = 16 * 1024


class CuttableProxy:
    def __init__(self, upstream_port: int, rate: int) -> None:
        self.upstream_port = upstream_port
        self.rate = rate
        self.port = 0
        self.connections = 0
        self.reset_while_cut = 0
        self.bytes_up = 0
        self.is_cut = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._next_send = time.monotonic()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Reset every connection, and every new one until :meth:`restore`."""
        self.is_cut = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.is_cut = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.is_cut:
            self.reset_while_cut += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, throttled=True), self._pump(up_reader, writer, throttled=False)
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, throttled: bool) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await source.read(PIECE):
                if throttled:
                    self.bytes_up += len(data)
                    # One shared schedule for every connection: the total upload rate stays at ``rate``.
                    now = time.monotonic()
                    self._next_send = max(self._next_send, now) + len(data) / self.rate
                    await asyncio.sleep(max(0.0, self._next_send - now - len(data) / self.rate))
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(OSError):
            if sink.can_write_eof():
                sink.write_eof()


@contextlib.asynccontextmanager
async def cuttable_proxy(upstream_port: int, rate: int) -> AsyncIterator[CuttableProxy]:
    proxy = CuttableProxy(upstream_port, rate)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
