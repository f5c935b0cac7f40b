"""Everything eftgw uses of asyncssh beyond its public API, in one place, for the version it was tested with.

:func:`require_tested_version` runs when the SFTP service starts and refuses any other asyncssh version with
a clear message; ``tests/sftp/test_asyncssh_compat.py`` and ``tests/sftp/test_asyncssh_receive_path.py``
fail loudly when an upgrade changes one of the internals below, and ``tests/sftp`` exercise each of them
with real clients.

1. How an SSH session becomes an SFTP session of the gateway. Three things are not reachable through
   asyncssh's public ``sftp_factory``, so the session is started here:

- telling an explicit ``CLOSE`` from the closing of handles at teardown. asyncssh closes every open handle
  through the same :meth:`SFTPServer.close` when the client goes away; the handler below marks the server as
  tearing down first, so that a dropped connection never finishes an upload;
- write requests with bytes after the data, which OpenSSH's sftp-server ignores and rclone sends;
- the extensions offered: only what the case area supports (``posix-rename``, ``fsync``, ``lsetstat``,
  ``limits``), and limits that keep one request's memory small (256 KiB reads and writes, as OpenSSH's
  sftp-server; the session's limit of open handles).

- reading a request in one step once all of it is in the session's receive buffer, where the loop waits
  for it (:mod:`eftgw.sftp.asyncssh_requests`): asyncssh reads each request with two exact stream reads,
  each taking the stream's read lock and looping over the buffer, and joins the whole request; about 4,100
  requests per GiB of an OpenSSH ``put``. A write request's data is joined on its own, a ``bytes`` the
  write buffer hands the store as it is.

   (internals: ``SFTPServerHandler`` with its ``_extensions``, ``_packet_handlers``, ``_cleanup``,
   ``_file_handles`` and ``_server``, ``SFTPHandler.recv_packet``; ``SSHServerStreamSession`` with ``_chan``,
   ``_conn``, ``_encoding``, ``_recv_buf``, ``_recv_buf_len``, ``_read_locks``, ``_block_read``,
   ``_read_waiters``, ``_eof_received``, ``_read_paused``; ``SSHReader._session``).
2. Whether strict key exchange was negotiated (Terrapin): asyncssh records it only in ``_strict_kex``.
3. Seeing the outcome and algorithm of a public-key login signature: the approved key object's ``verify``
   is wrapped (asyncssh offers no hook between verifying the signature and reporting success).
4. The receive buffer of server connections (:func:`install_receive_buffer`). asyncssh keeps the bytes read
   from the socket in one ``bytes`` object and re-slices it for every packet, so each packet copies all the
   bytes after it: a 256 KiB socket read holding eight 32 KiB channel packets (what OpenSSH's client sends)
   is copied about nine times before it is decrypted. The gateway's server connections keep what they read in
   a queue instead and hand the packet parser exactly the bytes it waits for (a header block, then the rest
   of the packet), so each byte is copied once on its way to decryption; not at all when the rest of the
   packet lies in one socket read and goes to the gateway's packet path (9. below), which takes a view.

   Server connections read their socket ``SOCKET_READ`` (256 KiB) at a time, set on asyncio's
   ``_SelectorSocketTransport.max_size`` so that what a paused connection may hold does not follow asyncio's
   default. 1 MiB reads saved about 0.1 s of event-loop CPU per GiB but cost 60 MiB of peak memory in the
   100-upload mix, so they are not used.

   (internals: ``SSHConnection.connection_made``, ``data_received``, ``_recv_data``, ``_inpbuf``,
   ``_recv_handler``, ``_recv_pkthdr``, ``_recv_packet``, ``_recv_blocksize``, ``_pktlen``, ``_recv_macsize``,
   ``_reset_keepalive_timer``, ``_send_disconnect``, ``_force_close``, ``internal_error``,
   ``_finish_recv_packet``).
5. The packet ciphers chacha20-poly1305@openssh.com and aes*-gcm@openssh.com
   (:func:`eftgw.sftp.asyncssh_ciphers.install_packet_ciphers`). asyncssh (through ``cryptography``, i.e.
   OpenSSL; it no longer uses
   libsodium) builds three ChaCha20 contexts per packet and copies each packet into ``header + data`` for its
   Poly1305 tag, and builds a new ``AESGCM`` object (key schedule) per packet after copying the packet twice.
   The same constructions are computed here with one ChaCha20 context for the Poly1305 key and the data, an
   incremental Poly1305, and one ``AESGCM`` object per key, byte for byte what asyncssh computes (the tests
   check both against asyncssh's own classes). The ChaCha20 contexts are built once per key and moved to
   each packet's nonce (``CipherContext.reset_nonce``, cryptography >= 43). Whole packets are decrypted
   into reusable arenas (``decrypt_into``, ``update_into``), not into a new zeroed ``bytes`` each.

   (internals: ``asyncssh.encryption._enc_params``, ``ChachaEncryption`` and ``GCMEncryption`` with their
   ``new``/``encrypt_packet``/``decrypt_header``/``decrypt_packet`` signatures).
6. Counting what an SFTP session received and has not read (:class:`SFTPOnlySession` with a ``flow``) for
   the node's :class:`~eftgw.sftp.flow.ReceiveMemory`, which pauses reading the connection's socket.

   While a connection is paused its keepalive timer is stopped (its client's answers wait unread). Channel
   data taken by the gateway's packet path (9.) is counted once per socket read, after its packets were
   parsed (``asyncssh_data_path.settle``), not after each packet.

   (internals: ``SSHStreamSession._recv_buf_len``, ``_maybe_pause_reading``, ``_maybe_resume_reading``;
   ``SSHConnection._transport``, ``_cancel_keepalive_timer``, ``_reset_keepalive_timer``).
7. Replies sent together. asyncssh writes each SFTP reply to the channel at once, and the channel sends it as
   its own SSH packet, after an ``SSH_MSG_IGNORE`` (asyncssh sends one before every packet once encrypting),
   each encrypted and written to the socket on its own: two packets and two socket writes per request. The
   gateway's handler keeps small replies until the end of the event loop's turn and writes them as one: the
   requests handled in one turn are answered in one packet.

   (internals: ``SFTPHandler.send_packet`` that it replaces, with ``_writer`` and ``log_sent_packet``).
8. Packet logging (:func:`install_quiet_packet_log`). asyncssh describes every packet it sends or receives
   (SSH and SFTP: name, ``plural`` of its size, note) before its logger drops the line unless the debug level
   is 3: about 1.4 us, once or twice per SSH packet. The description is now made only at debug level 3.

   (internals: ``SSHPacketLogger._log_packet``, ``SSHLogger._debug_level``).
9. Channel data received as views (:mod:`eftgw.sftp.asyncssh_data_path`, installed with the receive buffer).
   asyncssh copies each channel data packet four times on its way from the socket to the session and builds
   a packet object for it; the SFTP sessions' data packets are decrypted in two parts and reach the session
   as a view of the decrypted bytes (one copy, the decryption's), appended to the session's buffer in one
   step (``asyncssh_data_path.deliver``, four calls of asyncssh's less per packet); every other packet keeps
   asyncssh's path.
   The same module stops the ``SSH_MSG_IGNORE`` asyncssh sends before every packet (a CBC countermeasure)
   for chacha20-poly1305 and AES-GCM. With these two ciphers each packet is taken from the receive buffer
   (4.) in one step once all of it is there (``recv_whole``): its length, the whole packet decrypted (from
   a view of the socket read when it lies in one, else joined once), channel data handed on; asyncssh's
   header step and the separate rest of the packet remain for the other ciphers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncssh
from asyncssh import (
    SFTPInvalidHandle,
    SFTPLimits,
    SFTPNoConnection,
    SFTPServer,
    SSHReader,
    SSHServerChannel,
    SSHWriter,
)
from asyncssh.connection import SSHServerConnection
from asyncssh.constants import FXP_WRITE
from asyncssh.logging import SSHLogger
from asyncssh.misc import DisconnectError
from asyncssh.packet import Byte, PacketDecodeError, SSHPacket, SSHPacketLogger, UInt32
from asyncssh.sftp import SFTPServerHandler
from asyncssh.stream import SSHServerStreamSession

from eftgw.sftp import asyncssh_data_path, asyncssh_requests
from eftgw.sftp.asyncssh_requests import MAX_REQUEST, WriteRequest
from eftgw.sftp.flow import Readable, ReceiveMemory

TESTED_VERSIONS = frozenset({"2.24.1"})
"""The asyncssh versions whose internals this module was checked against (``pyproject.toml`` pins one)."""

SFTP_VERSION = 3
MAX_OPEN_HANDLES = 64
COALESCE_BELOW = 4096
"""Replies smaller than this (status, handle, attributes) wait for the end of the event loop's turn and go out
together; larger ones (read data, directory listings) are sent at once, after those waiting."""

_SUPPORTED_EXTENSIONS = {
    b"posix-rename@openssh.com",
    b"fsync@openssh.com",
    b"lsetstat@openssh.com",
    b"limits@openssh.com",
}


_Handler = Callable[[SFTPServerHandler, SSHPacket], Awaitable[object]]


class _GatewaySFTPHandler(SFTPServerHandler):
    """asyncssh's SFTP request loop, with teardown marked, only the supported extensions, and small replies
    sent together (see 7. above)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._replies: list[bytes] = []
        self._replies_flush: asyncio.Handle | None = None

    def send_packet(self, pkttype: int, pktid: int | None, *args: bytes) -> None:
        """asyncssh's ``SFTPHandler.send_packet``, except that a reply under ``COALESCE_BELOW`` bytes waits
        for the end of this turn of the event loop, to go out in one channel write with the others."""
        writer = self._writer
        if not writer:
            raise SFTPNoConnection("Connection not open")
        if writer.channel.is_closing():
            return
        payload = Byte(pkttype) + b"".join(args)
        packet = UInt32(len(payload)) + payload
        self.log_sent_packet(pkttype, pktid, payload)
        if len(packet) >= COALESCE_BELOW:
            self._flush_replies()
            writer.write(packet)
            return
        self._replies.append(packet)
        if self._replies_flush is None:
            self._replies_flush = asyncio.get_running_loop().call_soon(self._flush_replies)

    async def recv_packet(self) -> SSHPacket:
        """asyncssh's ``SFTPHandler.recv_packet`` (a request's length, then the request, read exactly from the
        stream), but the loop waits until the whole request is in the session's receive buffer and takes it
        from there at once (:mod:`eftgw.sftp.asyncssh_requests`): two stream reads (each with its lock and
        loop) less per request, and a write request's data joined on its own."""
        reader = self._reader
        if reader is not None:
            session = reader._session
            while True:
                pieces = asyncssh_requests.take_request(session)
                if pieces is not None:
                    return asyncssh_requests.request_packet(pieces)
                if not asyncssh_requests.waits_in_buffer(session):
                    break
                await session._block_read(None)  # woken when data, an end of file or a close arrives
        return await super().recv_packet()

    def _flush_replies(self) -> None:
        """Send the replies waiting (in order, as one channel write)."""
        if self._replies_flush is not None:
            self._replies_flush.cancel()
            self._replies_flush = None
        replies, self._replies = self._replies, []
        writer = self._writer
        if not replies or not writer or writer.channel.is_closing():
            return
        with contextlib.suppress(OSError):  # the channel stopped sending; the request loop sees it end
            writer.write(replies[0] if len(replies) == 1 else b"".join(replies))

    # These two override asyncssh's class attributes of the same names and shapes.
    _extensions = [  # noqa: RUF012
        (name, value)
        for name, value in SFTPServerHandler._extensions
        if name in _SUPPORTED_EXTENSIONS or name in (b"newline", b"vendor-id")
    ]

    async def _cleanup(self, exc: Exception | None) -> None:
        self._flush_replies()
        server = self._server
        begin_teardown = getattr(server, "begin_teardown", None)
        if begin_teardown is not None:
            begin_teardown()
        await super()._cleanup(exc)

    async def _process_write(self, packet: SSHPacket) -> int:
        """A write request; like OpenSSH's sftp-server, bytes after the data are ignored, not refused
        (the SFTP library inside rclone sends them). The data is a view into the request, not a copy."""
        handle = packet.get_string()
        offset = packet.get_uint64()
        length = packet.get_uint32()
        data: bytes | memoryview
        if isinstance(packet, WriteRequest):  # the data joined on its own (request_packet)
            packet.check_end()
            if length != len(packet.data):
                raise PacketDecodeError("Incomplete packet")
            data = packet.data
        else:
            start = len(packet.get_consumed_payload())
            request = packet.get_full_payload()
            if start + length > len(request):
                raise PacketDecodeError("Incomplete packet")
            data = memoryview(request)[start : start + length]
        file_obj = self._file_handles.get(handle)
        if file_obj is None:
            raise SFTPInvalidHandle("Invalid file handle")
        result = self._server.write(file_obj, offset, cast(bytes, data))  # CaseSFTPServer takes views
        return await result if inspect.isawaitable(result) else result

    async def _process_limits(self, packet: SSHPacket) -> SFTPLimits:
        packet.check_end()
        handles = getattr(self._server, "max_open_handles", MAX_OPEN_HANDLES)
        return SFTPLimits(MAX_REQUEST + 1024, MAX_REQUEST, MAX_REQUEST, handles)

    _packet_handlers = {  # noqa: RUF012
        **{
            key: handler
            for key, handler in SFTPServerHandler._packet_handlers.items()
            if not isinstance(key, bytes) or key in _SUPPORTED_EXTENSIONS
        },
        FXP_WRITE: cast(_Handler, _process_write),
        b"limits@openssh.com": cast(_Handler, _process_limits),
    }


class SFTPOnlySession(SSHServerStreamSession[bytes]):
    """An SSH session that runs the SFTP subsystem and nothing else (no shell, exec, scp or pty).

    With a ``flow`` (see 6. above), the bytes in its receive buffer count against the node's
    :class:`~eftgw.sftp.flow.ReceiveMemory`, which pauses the connection's socket, and the channel is never
    paused (asyncssh pauses it when the buffer holds a window, and then buffers another window in it).
    """

    def __init__(
        self, sftp_factory: Callable[[SSHServerChannel[bytes]], SFTPServer], flow: ReceiveMemory | None = None
    ) -> None:
        super().__init__(None, sftp_factory, SFTP_VERSION, False)  # type: ignore[arg-type]
        self._server_factory = sftp_factory
        self._flow = flow
        self._counted = 0  # of the bytes in the receive buffer, what ``flow`` was told of
        self._transport: Readable | None = None

    def pty_requested(self, *args: Any) -> bool:
        return False

    def _account(self) -> None:
        if self._flow is None or self._transport is None:
            return
        delta = self._recv_buf_len - self._counted
        if delta:
            self._counted += delta
            self._flow.change(self._transport, delta)

    def _maybe_pause_reading(self) -> bool:  # asyncssh calls it after data arrived
        if self._flow is None:
            return super()._maybe_pause_reading()
        self._account()
        return False

    def _maybe_resume_reading(self) -> bool:  # asyncssh calls it after a read took data
        if self._flow is None:
            return super()._maybe_resume_reading()
        self._account()
        return False

    def reading_paused(self) -> bool:
        """Whether the node's receive memory stopped this session's connection from reading its socket."""
        return (
            self._flow is not None and self._transport is not None and self._flow.is_paused(self._transport)
        )

    def connection_made(self, chan: SSHServerChannel[bytes]) -> None:  # type: ignore[override]
        super().connection_made(chan)
        if self._flow is not None:
            self._transport = _socket_reading_of(chan.get_connection())

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        flow, transport = self._flow, self._transport
        if flow is not None and transport is not None:
            self._transport = None  # what is still buffered is read without a socket behind it
            flow.change(transport, -self._counted)
            self._counted = 0
            if transport.is_closing():
                flow.forget(transport)

    def session_started(self) -> None:
        chan = self._chan
        conn = self._conn
        if chan is None or conn is None:
            return
        if chan.get_subsystem() != "sftp":
            chan.close()
            return
        chan.set_encoding(None)
        self._encoding = None
        asyncssh_data_path.deliver_views(chan)  # the reader below only slices and joins what it receives
        reader: SSHReader[bytes] = SSHReader(self, chan)
        writer: SSHWriter[bytes] = SSHWriter(self, chan)
        server = self._server_factory(chan)  # type: ignore[arg-type]
        handler = _GatewaySFTPHandler(server, reader, writer, SFTP_VERSION)
        conn.create_task(handler.run(), reader.logger)


class _SocketReading:
    """Reading a connection's socket, paused and resumed for the node's receive memory (one per connection).

    While reading is paused the keepalive timer is stopped: the client's answers to keepalive requests wait
    unread in the socket, and asyncssh would drop, as not responding, a client that is only made to wait.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def pause_reading(self) -> None:
        conn = self._conn
        if conn._transport is not None:
            conn._transport.pause_reading()
        conn._cancel_keepalive_timer()

    def resume_reading(self) -> None:
        conn = self._conn
        if conn._transport is not None and not conn._transport.is_closing():
            conn._transport.resume_reading()
            conn._reset_keepalive_timer()

    def is_closing(self) -> bool:
        transport = self._conn._transport
        return transport is None or bool(transport.is_closing())


def _socket_reading_of(conn: Any) -> Readable:
    reading: _SocketReading | None = conn.__dict__.get("_eftgw_socket_reading")
    if reading is None:
        reading = conn.__dict__["_eftgw_socket_reading"] = _SocketReading(conn)
    return reading


class UntestedAsyncsshVersion(RuntimeError):
    """asyncssh is not a version this module's use of its internals was tested with."""


def require_tested_version(version: str | None = None) -> None:
    """Refuse to serve SFTP with an asyncssh this module was not tested with (its internals may differ).

    :raises UntestedAsyncsshVersion: naming the installed and the tested versions.
    """
    found = version if version is not None else asyncssh.__version__
    if found not in TESTED_VERSIONS:
        raise UntestedAsyncsshVersion(
            f"asyncssh {found} is installed, but eftgw's SFTP service was tested only with asyncssh "
            f"{', '.join(sorted(TESTED_VERSIONS))}; install the version pinned in eftgw's requirements"
        )


def strict_kex_negotiated(conn: asyncssh.SSHServerConnection) -> bool:
    """Whether the client and the gateway agreed on strict key exchange (``kex-strict-*-v00@openssh.com``)."""
    return bool(getattr(conn, "_strict_kex", False))


def wrap_signature_check(
    key: asyncssh.SSHKey, check: Callable[[bytes, bytes, Callable[[bytes, bytes], bool]], bool]
) -> None:
    """Make this key object's signature verification go through ``check(data, sig, verify)``, where
    ``verify`` is the key's own; asyncssh verifies a public-key login with the very key object the server
    approved, whatever signature algorithm the client chose, and only then reports success."""
    verify = key.verify

    def checked(data: bytes, sig: bytes) -> bool:
        return check(data, sig, verify)

    key.verify = checked  # type: ignore[method-assign]


class _ReceiveQueue:
    """What a connection read and has not yet handed to its packet parser: chunks, the first partly taken."""

    __slots__ = ("_chunks", "_offset", "size")

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._offset = 0
        self.size = 0

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self.size += len(data)

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes from the front, as one ``bytes`` (each byte copied once)."""
        n = min(n, self.size)
        pieces: list[bytes | memoryview] = []
        left = n
        while left:
            chunk = self._chunks[0]
            available = len(chunk) - self._offset
            if available <= left:
                pieces.append(memoryview(chunk)[self._offset :] if self._offset else chunk)
                self._chunks.popleft()
                self._offset = 0
                left -= available
            else:
                pieces.append(memoryview(chunk)[self._offset : self._offset + left])
                self._offset += left
                left = 0
        self.size -= n
        if len(pieces) == 1 and isinstance(pieces[0], bytes):
            return pieces[0]
        return b"".join(pieces)

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes from the front, joined, without taking them."""
        pieces: list[bytes | memoryview] = []
        offset, left = self._offset, min(n, self.size)
        for chunk in self._chunks:
            if not left:
                break
            piece = memoryview(chunk)[offset : offset + left]
            pieces.append(piece)
            left -= len(piece)
            offset = 0
        return b"".join(pieces)

    def front(self) -> tuple[bytes, int]:
        """The first chunk and the offset of its first byte not taken (``b"", 0`` when empty)."""
        return (self._chunks[0], self._offset) if self._chunks else (b"", 0)

    def advance(self, n: int) -> None:
        """Take ``n`` bytes of the first chunk (at most what is left of it)."""
        self._offset += n
        self.size -= n
        if self._offset >= len(self._chunks[0]):
            self._chunks.popleft()
            self._offset = 0

    def take_view(self, n: int) -> bytes | memoryview:
        """Like :meth:`take`, but a view of the chunk (no copy) when the bytes lie inside one chunk."""
        chunk = self._chunks[0] if self._chunks else b""
        start = self._offset
        end = start + n
        if n <= 0 or end > len(chunk) or (start == 0 and end == len(chunk)):
            return self.take(n)  # across chunks (joined), or a whole chunk (itself)
        if end == len(chunk):
            self._chunks.popleft()
            self._offset = 0
        else:
            self._offset = end
        self.size -= n
        return memoryview(chunk)[start:end]


def _queue_of(conn: Any) -> _ReceiveQueue:
    queue: _ReceiveQueue | None = conn.__dict__.get("_eftgw_received")
    if queue is None:
        queue = conn.__dict__["_eftgw_received"] = _ReceiveQueue()
    return queue


def _bytes_wanted(conn: Any) -> int | None:
    """How many bytes the packet parser needs in ``_inpbuf`` to make progress; None: all there is."""
    handler = conn._recv_handler
    func = getattr(handler, "__func__", None)
    if func is SSHServerConnection._recv_pkthdr:
        return int(conn._recv_blocksize)
    if func is SSHServerConnection._recv_packet:
        return 4 + int(conn._pktlen) + int(conn._recv_macsize) - int(conn._recv_blocksize)
    if func is SSHServerConnection._recv_version:
        return None
    # a packet handler is running (asyncssh parks ``_recv_handler`` on a lambda): have the next header
    # ready, so that asyncssh resumes parsing when the handler finishes (it does only if ``_inpbuf`` holds
    # bytes)
    return int(conn._recv_blocksize)


def _queued_data_received(self: Any, data: bytes, datatype: object = None) -> None:
    _queue_of(self).append(data)
    self._recv_data()


def _queued_recv_data(self: Any) -> None:
    """asyncssh's ``_recv_data``, topping ``_inpbuf`` up from the queue with what the parser waits for."""
    self._reset_keepalive_timer()
    queue = _queue_of(self)
    try:
        while True:
            if self._inpbuf and self._recv_handler():
                continue
            if queue.size:
                took = asyncssh_data_path.recv_whole(self, queue)
                if took:
                    continue  # a whole packet in one step (decrypted from a view of its socket read)
                if took is None:
                    return  # the packet is not all there yet
            wanted = _bytes_wanted(self)
            have = len(self._inpbuf)
            if not queue.size or (wanted is not None and have >= wanted):
                return  # waiting for the socket, or for a packet handler to finish
            more: bytes | memoryview
            if not have and wanted is not None and asyncssh_data_path.takes_views(self):
                more = queue.take_view(wanted)  # the rest of a packet, for the gateway's packet path
            else:
                more = queue.take(queue.size if wanted is None else wanted - have)
            self._inpbuf = self._inpbuf + more if have else more
            if self._recv_handler is not None and not _parsing(self):
                return  # a packet handler is running; it resumes parsing with these bytes
    except DisconnectError as exc:
        self._send_disconnect(exc.code, exc.reason, exc.lang)
        self._force_close(exc)
    except Exception:
        self.internal_error()
    finally:
        asyncssh_data_path.settle(self)  # the sessions count what this read brought them


def _parsing(conn: Any) -> bool:
    func = getattr(conn._recv_handler, "__func__", None)
    return func in (
        SSHServerConnection._recv_pkthdr,
        SSHServerConnection._recv_packet,
        SSHServerConnection._recv_version,
    )


SOCKET_READ = 256 * 1024
"""How much a server connection asks its socket for at once (asyncio's default too). During a 1 GiB ``put``
the reads come full, about 4,100 per GiB. It is also what a connection paused for the node's receive memory
may still hold unparsed. 1 MiB reads took about 0.1 s/GiB off the event loop (whole process: within the
noise) but raised the 100-upload mix's peak RSS from 323-328 to 382-391 MiB (50 SFTP connections, each read
a 1 MiB buffer), too close to its 400 MiB."""

_ASYNCSSH_CONNECTION_MADE = SSHServerConnection.connection_made


def _connection_made_reading(self: Any, transport: asyncio.BaseTransport) -> None:
    """asyncssh's ``connection_made``, then socket reads of ``SOCKET_READ`` bytes (asyncio's selector
    transports read ``max_size`` bytes at a time)."""
    _ASYNCSSH_CONNECTION_MADE(self, transport)
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = SOCKET_READ  # type: ignore[attr-defined]


def install_receive_buffer() -> None:
    """Make asyncssh's server connections read ``SOCKET_READ`` bytes at a time and queue what they read (see
    4. above); idempotent, process-wide."""
    cls: Any = SSHServerConnection
    cls.connection_made = _connection_made_reading
    cls.data_received = _queued_data_received
    cls._recv_data = _queued_recv_data
    asyncssh_data_path.install()


_LOG_PACKET = SSHPacketLogger._log_packet


def _log_packet_if_logged(
    self: SSHPacketLogger, msg: str, pkttype: int, pktid: int | None, packet: Any, note: str
) -> None:
    if SSHLogger._debug_level >= 3:  # what SSHLogger.packet requires before it logs anything
        _LOG_PACKET(self, msg, pkttype, pktid, packet, note)


def install_quiet_packet_log() -> None:
    """Describe SSH and SFTP packets for the log only when asyncssh's debug level (3) logs them (see 8.
    above); idempotent, process-wide."""
    cls: Any = SSHPacketLogger
    cls._log_packet = _log_packet_if_logged
