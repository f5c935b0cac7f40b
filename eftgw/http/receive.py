"""Upload bodies received by the connection straight into the upload pipeline's blocks.

aiohttp hands a request body on as chunks: the transport reads up to 256 KiB into a new ``bytes``, aiohttp's
parser copies the body's part of it into another, its ``StreamReader`` queues that, and the pipeline
(:mod:`eftgw.ingest`) takes it through an async iterator. For an upload body with a ``Content-Length``,
:meth:`RequestBody.blocks` instead switches the connection's transport to a :class:`BlockReceiver` (an
:class:`asyncio.BufferedProtocol`): the socket's ``recv_into`` (plain HTTP) or TLS's ``SSLObject.read`` into
a buffer (HTTPS) writes the body into the block the pipeline hashes and writes next, up to the body's end and
no further, so a request pipelined behind the body stays on the connection for aiohttp. At the body's end
aiohttp's protocol is put back with a new parser and the request's payload gets its EOF
(:func:`eftgw.http.aiohttp_compat.give_back`); the connection serves its next request as before.

- Bytes aiohttp already held for the body (they arrived with the headers) fill the first block first.
- Backpressure: the receiver reads its connection only while the pipeline waits for a block
  (:meth:`BlockReceiver.fill`); while both blocks are busy (one hashed and written, the next received and
  waiting) the transport is paused, so what an upload holds stays within :func:`eftgw.memory.pipeline_held`.
- A client that goes away or half-closes mid-body: :class:`BodyInterrupted` (the pipeline keeps what
  arrived), and aiohttp's ``connection_lost`` runs as ever (the receiver forwards it, with
  ``eof_received`` and the write flow control).
- A client that stalls mid-body: aiohttp 3.14's server has no read timeout for a body, so the gateway keeps
  its own. When a body brings no byte for ``idle_timeout`` seconds (``EFTGW_BODY_IDLE_TIMEOUT``, 60 s) the
  connection is aborted and the body is interrupted as if the client had gone: what arrived is kept, and
  the upload's pipeline blocks, store buffers (an S3 part reserves its size in the node's upload budget)
  and lease are given back. A client that stalls (or a hostile one that sends a few bytes and waits) thus
  cannot hold them for ever; a slow client that keeps sending is never cut, however long a block takes to
  fill. No answer is sent: a tus client sees a network error and resumes from the offset (an error status
  would end its upload). ``eftgw_http_body_stalls`` counts these. A dead peer's connection ends the same
  way (TCP keepalive may take much longer), and a newer request for the upload takes it over at once (the
  pipeline's lease).
- The pipeline stopping before the body's end (a takeover, a closed case, a store error): the rest of the
  body is read and dropped, as aiohttp's lingering read would, so the response reaches the client and the
  connection stays usable; aiohttp still bounds that with its lingering time.
- Where the switch cannot be made, the body is read through aiohttp as before (async iteration of
  :class:`RequestBody`): no ``Content-Length`` (chunked), a ``Content-Encoding``, a transport other than
  asyncio's socket and TLS transports, aiohttp holding more than the body's bytes (a pipelined request
  already parsed, a paused parser), the whole body received already, or an untested aiohttp version
  (:func:`eftgw.http.aiohttp_compat.takeover_refusal`). ``eftgw_http_upload_bodies`` counts both paths.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from eftgw import metrics
from eftgw.errors import BodyInterrupted
from eftgw.http import aiohttp_compat

log = logging.getLogger("eftgw.http")

DISCARD_READ = 64 * 1024  # what one read of a body the pipeline no longer takes drops at once


class RequestBody:
    """An upload request's body for :meth:`eftgw.ingest.Ingest.write_body`: received into the pipeline's
    blocks where the connection allows it (:meth:`blocks`), else read as aiohttp's chunks (iteration; a lost
    connection becomes :class:`BodyInterrupted`)."""

    def __init__(self, request: web.BaseRequest, idle_timeout: float) -> None:
        self._request = request
        self._idle_timeout = idle_timeout  # seconds the body may bring no byte (see the module's docstring)
        self._early: list[bytes] = []
        self._chunks: AsyncIterator[bytes] | None = None
        self._asked = False

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        if self._chunks is None:
            self._asked = True
            self._chunks = _chunks(self._request, self._early, self._idle_timeout)
        return await anext(self._chunks)

    def blocks(self) -> BlockReceiver | None:
        """Switch the connection to receive the body into blocks; ``None`` if it cannot (read by iteration).
        Asked once, before any iteration."""
        if self._asked or not self._request.can_read_body:
            return None
        self._asked = True
        request = self._request
        refusal = aiohttp_compat.takeover_refusal(request)
        if refusal is None:
            self._early, refusal = aiohttp_compat.take_buffered(request)
        if refusal is not None:
            log.debug("upload body read through aiohttp: %s", refusal)
            metrics.HTTP_BODIES.labels("chunks", refusal).inc()
            return None
        metrics.HTTP_BODIES.labels("blocks", "").inc()
        receiver = BlockReceiver(request, self._early, self._idle_timeout)
        self._early = []
        return receiver


async def _chunks(request: web.BaseRequest, early: list[bytes], idle_timeout: float) -> AsyncIterator[bytes]:
    """The body as aiohttp's chunks after ``early`` (what was taken from it already); a wait of
    ``idle_timeout`` seconds for the next chunk ends the connection (:func:`_stalled`).

    Each chunk is one piece as the connection received it (``iter_chunks``): ``iter_any`` would join the
    pieces that arrived since the last read into a new buffer, a copy of most of the body on a busy node.
    A request without a body is not read at all: aiohttp shares one empty stream between all of them, and
    once read, its ``iter_chunks`` never ends.
    """
    for chunk in early:
        yield chunk
    early.clear()
    if not request.can_read_body:
        return
    chunks = request.content.iter_chunks()
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk, _ = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            transport = request.transport
            if transport is not None:
                _stalled(transport, idle_timeout)
            raise BodyInterrupted() from None
        except (ConnectionError, aiohttp.ClientError, HttpProcessingError) as exc:
            raise BodyInterrupted() from exc
        if chunk:
            yield chunk


def _stalled(transport: asyncio.Transport, idle_timeout: float) -> None:
    """End the connection of a body that brought no byte for ``idle_timeout`` seconds."""
    peer = transport.get_extra_info("peername")
    log.info(
        "upload body from %s brought nothing for %g s: connection closed, what arrived is kept",
        peer[0] if isinstance(peer, tuple) else peer,
        idle_timeout,
    )
    metrics.HTTP_BODY_STALLS.inc()
    transport.abort()


class BlockReceiver(asyncio.BufferedProtocol):
    """The connection's protocol while a body is received into blocks (see the module's docstring); an
    :class:`eftgw.ingest.BlockSource`."""

    def __init__(self, request: web.BaseRequest, early: list[bytes], idle_timeout: float) -> None:
        transport = request.transport
        assert transport is not None
        self._request = request
        self._transport: asyncio.Transport = transport
        self._handler = request.protocol
        self._early: deque[memoryview] = deque(memoryview(chunk) for chunk in early)
        self._unreceived = aiohttp_compat.unreceived(request)  # still to come from the connection
        self._remaining = sum(len(chunk) for chunk in early) + self._unreceived
        self._received = 0
        self._block: memoryview | None = None  # the block being received, with _filled bytes in it
        self._filled = 0
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._discarding = False
        self._scratch: bytearray | None = None
        self._lost: Exception | None = None
        self._done = False
        self._loop = asyncio.get_running_loop()
        self._idle_timeout = idle_timeout
        self._heard = 0.0  # loop time of the last byte, while a watch is kept (_watch)
        self._watch: asyncio.TimerHandle | None = None
        transport.set_protocol(self)
        self._pause()  # until the pipeline asks for a block

    # the pipeline's side (eftgw.ingest.BlockSource) ------------------------------------------------------

    @property
    def remaining(self) -> int:
        return self._remaining

    @property
    def received(self) -> int:
        return self._received

    @property
    def unreceived(self) -> int:
        """Bytes of the body the connection has still to deliver."""
        return self._unreceived

    async def fill(self, block: memoryview) -> None:
        if not 0 < len(block) <= self._remaining or self._block is not None or self._discarding:
            raise RuntimeError("a block was asked for out of turn")
        filled = self._take_early(block)
        if filled < len(block):
            if self._lost is not None:
                self._received = filled
                raise BodyInterrupted() from self._lost
            waiter = self._waiter = self._loop.create_future()
            self._block, self._filled = block, filled
            self._resume()
            self._keep_watch()
            try:
                await waiter
            except BaseException as exc:
                self._received = self._filled
                self._block, self._waiter = None, None
                self._pause()  # until close() drops the rest
                if isinstance(exc, ConnectionError):
                    raise BodyInterrupted() from exc
                raise
            finally:
                self._waiter = None
        self._remaining -= len(block)

    def close(self) -> None:
        """The pipeline takes no more: the rest of the body, if any, is read and dropped."""
        self._block = None
        if self._done or self._lost is not None or self._discarding:
            return
        self._discarding = True
        self._resume()
        self._keep_watch()

    def _take_early(self, block: memoryview) -> int:
        filled = 0
        while self._early and filled < len(block):
            data = self._early[0]
            n = min(len(data), len(block) - filled)
            block[filled : filled + n] = data[:n]
            filled += n
            if n == len(data):
                self._early.popleft()
            else:
                self._early[0] = data[n:]
        return filled

    def _pause(self) -> None:
        # A lost connection's transport is closing: it reads nothing more (and its TLS layer is gone).
        if not self._paused and self._lost is None and not self._transport.is_closing():
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self._lost is None and not self._transport.is_closing():
            self._paused = False
            self._transport.resume_reading()

    def _keep_watch(self) -> None:
        """From now on, ``idle_timeout`` seconds without a byte while the connection is read end it. Paused
        time (the pipeline busy with both blocks) does not count: each wait for bytes starts afresh."""
        self._heard = self._loop.time()
        if self._watch is None:
            self._watch = self._loop.call_later(self._idle_timeout, self._check_idle)

    def _end_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _check_idle(self) -> None:
        self._watch = None
        if self._done or self._lost is not None or (self._block is None and not self._discarding):
            return  # over, or paused until the pipeline asks for a block: not the client's stall
        quiet = self._loop.time() - self._heard
        if quiet < self._idle_timeout:
            self._watch = self._loop.call_later(self._idle_timeout - quiet, self._check_idle)
            return
        self._fail(ConnectionResetError(f"the body brought nothing for {self._idle_timeout:g} s"))
        _stalled(self._transport, self._idle_timeout)

    def _finish(self) -> None:
        """The whole body was received: the connection is aiohttp's again."""
        self._done = True
        self._end_watch()
        self._resume()
        aiohttp_compat.give_back(self._request, self._transport)

    # the connection's side (asyncio.BufferedProtocol) ------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        block = self._block
        if block is not None:
            return block[self._filled :]
        if not self._discarding:
            # The transport reads only while a block is asked for (it is paused otherwise).
            raise RuntimeError("the connection was read with no block to receive into")
        if self._scratch is None:
            self._scratch = bytearray(DISCARD_READ)
        return memoryview(self._scratch)[: min(DISCARD_READ, self._unreceived)]

    def buffer_updated(self, nbytes: int) -> None:
        self._unreceived -= nbytes
        self._heard = self._loop.time()
        block = self._block
        if block is not None:
            self._filled += nbytes
            if self._filled < len(block):
                return
            self._block = None
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
            if self._unreceived:
                self._pause()  # until the pipeline asks for the next block
                return
        if not self._unreceived:
            self._finish()

    def eof_received(self) -> bool | None:
        # The client ended its side before the body's end: the body is interrupted; aiohttp decides the rest.
        self._fail(ConnectionResetError("the client ended the connection before the body's end"))
        return self._handler.eof_received()  # type: ignore[func-returns-value]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionResetError("connection lost") if exc is None else exc)
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def _fail(self, exc: Exception) -> None:
        self._end_watch()
        if self._lost is None:
            self._lost = exc if isinstance(exc, ConnectionError) else ConnectionResetError(str(exc))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._lost)


__all__ = ["BlockReceiver", "RequestBody"]
