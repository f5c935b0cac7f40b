"""Everything eftgw uses of aiohttp (and asyncio's transports) beyond their public APIs, in one place.

``tests/http/test_aiohttp_compat.py`` checks that each internal below exists and behaves as assumed, so an
upgrade of aiohttp fails a test instead of corrupting uploads; :func:`takeover_refusal` also refuses any
aiohttp version other than the tested one, so an untested version falls back to aiohttp's own body path.

1. Taking a request's body off aiohttp's connection (:mod:`eftgw.http.receive`). While the handler streams a
   body with a ``Content-Length``, the connection's transport is switched to a buffered protocol of the
   gateway that receives the body straight into the upload pipeline's blocks; at the body's end aiohttp's
   protocol is put back, with a new request parser (its old one still expects the body), and the request's
   payload gets its EOF, so the next request on the keep-alive connection is aiohttp's again.

   What this relies on:

   - asyncio: ``selector_events._SelectorSocketTransport`` and ``sslproto._SSLProtocolTransport`` (what
     aiohttp's server runs on, also behind the PROXY-protocol listener's ``connect_accepted_socket``) switch
     to ``get_buffer``/``buffer_updated`` when ``set_protocol`` is given an :class:`asyncio.BufferedProtocol`,
     and back to ``data_received`` when given aiohttp's protocol again;
   - aiohttp's ``RequestHandler`` (``request.protocol``): ``_messages`` (requests parsed and not yet
     handled: a pipelined request behind the body means aiohttp received the whole body),
     ``_reading_paused`` and ``_buffer_paused`` (its holds on the transport; a paused parser may keep
     unparsed bytes, which it parses into the payload when resumed), ``_upgraded``, ``_payload_parser``,
     ``_parser`` and what it is built from (``_read_bufsize``, ``max_line_size``, ``max_field_size``,
     ``max_headers``, ``_loop``, the server's ``_kwargs`` for ``auto_decompress``),
     ``web_protocol.HttpRequestParser``, ``MAX_MSG_QUEUE_SIZE`` and ``RequestPayloadError``;
   - aiohttp's ``StreamReader`` (``request.content``): ``total_bytes`` counts every body byte the parser fed
     it, ``read_nowait`` takes what it holds and resumes the handler's reading (which parses a paused
     parser's bytes into it), ``feed_eof`` ends it and resumes the transport.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import asyncio.sslproto
from typing import Any

import aiohttp
from aiohttp import hdrs, web, web_protocol
from aiohttp.streams import StreamReader

TESTED_VERSIONS = frozenset({"3.14.5"})

# The transports whose protocol can be switched to a buffered one and back (CPython 3.11).
SWITCHABLE_TRANSPORTS: tuple[type, ...] = (
    asyncio.selector_events._SelectorSocketTransport,  # type: ignore[attr-defined]
    asyncio.sslproto._SSLProtocolTransport,
)


def takeover_refusal(request: web.BaseRequest) -> str | None:
    """Why the body of ``request`` cannot be taken off aiohttp's connection (a short reason, also a metric
    label), or ``None`` if it can. Nothing is changed."""
    if aiohttp.__version__ not in TESTED_VERSIONS:
        return "aiohttp_version"
    length = request.content_length
    if length is None or request.headers.get(hdrs.TRANSFER_ENCODING):
        return "no_length"
    if request.headers.get(hdrs.CONTENT_ENCODING):
        return "encoded"
    transport = request.transport
    if type(transport) not in SWITCHABLE_TRANSPORTS or transport is None or transport.is_closing():
        return "transport"
    handler = request.protocol
    if transport.get_protocol() is not handler:
        return "transport"
    if handler._upgraded or handler._payload_parser is not None or handler._buffer_paused:
        return "parser"
    payload = request.content
    if type(payload) is not StreamReader or payload.exception() is not None:
        return "parser"
    if handler._messages or payload.is_eof() or payload.total_bytes >= length:
        return "received"  # aiohttp has the whole body already
    return None


def take_buffered(request: web.BaseRequest) -> tuple[list[bytes], str | None]:
    """Take the body bytes aiohttp holds for ``request`` (they arrived with the headers, or before the
    handler got to the body), also those its paused parser still had to parse. Returns them, and why the
    body cannot be taken off the connection after all (``None`` if it can): the caller then reads the rest
    of the body through aiohttp, after these bytes."""
    payload = request.content
    handler = request.protocol
    taken: list[bytes] = []
    while True:
        # read_nowait resumes the handler's reading once the payload is drained; a paused parser then
        # parses the bytes it held into the payload, taken by the next round.
        data = payload.read_nowait()
        if not data:
            break
        taken.append(data)
    if handler._reading_paused or handler._buffer_paused or handler._messages or payload.is_eof():
        return taken, "parser"
    length = request.content_length
    assert length is not None
    if payload.total_bytes >= length:
        return taken, "received"
    return taken, None


def unreceived(request: web.BaseRequest) -> int:
    """How many bytes of the body aiohttp has not received yet."""
    length = request.content_length
    assert length is not None
    return length - request.content.total_bytes


def give_back(request: web.BaseRequest, transport: asyncio.Transport) -> None:
    """Put aiohttp's protocol back on ``transport`` after the whole body was received past it: a new request
    parser (the old one still expects the body), and the payload's EOF (which resumes the transport)."""
    handler = request.protocol
    transport.set_protocol(handler)
    handler._parser = new_parser(handler)
    request.content.feed_eof()


def new_parser(handler: web_protocol.RequestHandler) -> Any:
    """A request parser built as ``RequestHandler.__init__`` builds it."""
    manager = handler._manager
    options: dict[str, Any] = manager._kwargs if manager is not None else {}
    return web_protocol.HttpRequestParser(  # type: ignore[attr-defined]
        handler,
        handler._loop,
        handler._read_bufsize,
        max_line_size=handler.max_line_size,
        max_field_size=handler.max_field_size,
        max_headers=handler.max_headers,
        payload_exception=web_protocol.RequestPayloadError,
        auto_decompress=options.get("auto_decompress", True),
        max_msg_queue_size=web_protocol.MAX_MSG_QUEUE_SIZE,
    )


__all__ = [
    "SWITCHABLE_TRANSPORTS",
    "TESTED_VERSIONS",
    "give_back",
    "new_parser",
    "take_buffered",
    "takeover_refusal",
    "unreceived",
]
