"""The asyncssh internals eftgw relies on (eftgw/sftp/asyncssh_compat.py) are still there and shaped as used.

Each test names one internal; an asyncssh upgrade that moves or reshapes it fails here with that name, before
any SFTP client test has to be read to find out why.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
from types import SimpleNamespace
from typing import Any

import asyncssh
import pytest
from asyncssh.constants import FXP_WRITE
from asyncssh.packet import PacketDecodeError, SSHPacket, String, UInt32, UInt64
from asyncssh.sftp import SFTPServerHandler
from asyncssh.stream import SSHServerStreamSession
from asyncssh_sink import Sink

from eftgw.sftp import asyncssh_compat as compat
from eftgw.sftp import asyncssh_requests

pytestmark = pytest.mark.once  # asyncssh's internals, no gateway: the backend does not matter here


def test_the_installed_asyncssh_is_the_tested_one() -> None:
    """The pinned asyncssh is one the compatibility module was checked against."""
    compat.require_tested_version()


def test_another_asyncssh_version_is_refused_with_a_clear_message() -> None:
    """An untested version stops the SFTP service at start, naming both versions."""
    with pytest.raises(compat.UntestedAsyncsshVersion, match=r"asyncssh 9\.9\.9 is installed.*2\.24\.1"):
        compat.require_tested_version("9.9.9")


def test_the_sftp_request_loop_internals_are_shaped_as_used() -> None:
    """``SFTPServerHandler``: ``_extensions`` (name, value) byte pairs, ``_packet_handlers`` keyed by packet
    type and extension name, ``_cleanup(exc)`` and ``run()`` coroutines, and
    ``__init__(server, reader, writer, sftp_version)``."""
    assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in SFTPServerHandler._extensions)
    names = {name for name, _ in SFTPServerHandler._extensions}
    assert {b"posix-rename@openssh.com", b"fsync@openssh.com", b"limits@openssh.com"} <= names
    handlers = SFTPServerHandler._packet_handlers
    assert FXP_WRITE in handlers and b"limits@openssh.com" in handlers
    assert inspect.iscoroutinefunction(SFTPServerHandler._cleanup)
    assert list(inspect.signature(SFTPServerHandler._cleanup).parameters) == ["self", "exc"]
    assert inspect.iscoroutinefunction(SFTPServerHandler.run)
    assert list(inspect.signature(SFTPServerHandler.__init__).parameters)[:5] == [
        "self",
        "server",
        "reader",
        "writer",
        "sftp_version",
    ]


def test_the_gateway_handler_replaces_only_what_it_means_to() -> None:
    """Our handler keeps asyncssh's handlers for every packet type but WRITE, and offers only the supported
    extensions."""
    ours = compat._GatewaySFTPHandler._packet_handlers
    for key, handler in SFTPServerHandler._packet_handlers.items():
        if isinstance(key, int) and key != FXP_WRITE:
            assert ours[key] is handler
    assert {name for name, _ in compat._GatewaySFTPHandler._extensions} <= {
        *compat._SUPPORTED_EXTENSIONS,
        b"newline",
        b"vendor-id",
    }


def test_the_stream_session_internals_are_shaped_as_used() -> None:
    """``SSHServerStreamSession.__init__(handler_factory, sftp_factory, sftp_version, allow_scp)`` and the
    ``_chan``/``_conn``/``_encoding`` attributes it sets."""
    params = list(inspect.signature(SSHServerStreamSession.__init__).parameters)
    assert params[:5] == ["self", "session_factory", "sftp_factory", "sftp_version", "allow_scp"]
    session = compat.SFTPOnlySession(lambda chan: asyncssh.SFTPServer(chan))
    for attribute in ("_chan", "_conn", "_encoding"):
        assert hasattr(session, attribute), attribute


def test_channel_data_delivery_internals_are_shaped_as_used() -> None:
    """What ``asyncssh_data_path.deliver`` does in one step is what asyncssh's channel ``_accept_data`` and
    ``_deliver_data`` and the stream session's ``data_received`` do for data of a session without encoding:
    drop it once closing, take the window, buffer it while paused, adjust the window below half of it,
    append the data to ``_recv_buf[datatype]``, count it, wake the reader's waiter, then
    ``_maybe_pause_reading``."""
    channel = asyncssh.channel.SSHChannel
    accept = inspect.getsource(channel._accept_data)
    assert "if self._send_state in {'close_pending', 'closed'}:" in accept
    assert "self._recv_window -= len(data)" in accept
    assert "if self._recv_paused:" in accept and "self._deliver_data(data, datatype)" in accept
    deliver = inspect.getsource(channel._deliver_data)
    assert "if self._recv_window < self._init_recv_window / 2:" in deliver
    assert "if self._encoding:" in deliver
    assert "self._session.data_received(decoded_data, datatype)" in deliver
    stream = asyncssh.stream.SSHStreamSession
    received = inspect.getsource(stream.data_received)
    assert [line.strip() for line in received.split('"""')[-1].splitlines() if line.strip()] == [
        "self._recv_buf[datatype].append(data)",
        "self._recv_buf_len += len(data)",
        "self._unblock_read(datatype)",
        "self._maybe_pause_reading()",
    ]
    unblock = inspect.getsource(stream._unblock_read)
    assert "waiter = self._read_waiters[datatype]" in unblock
    assert "if waiter and not waiter.done():" in unblock and "waiter.set_result(None)" in unblock


def test_the_stream_session_flow_internals_are_shaped_as_used() -> None:
    """For the node's receive memory: ``SSHStreamSession`` counts its buffer in ``_recv_buf_len``, calls
    ``_maybe_pause_reading`` after data arrived and ``_maybe_resume_reading`` after a read took some;
    ``SSHConnection`` keeps its socket in ``_transport`` and its keepalive timer behind
    ``_cancel_keepalive_timer`` / ``_reset_keepalive_timer``."""
    stream = asyncssh.stream.SSHStreamSession
    received = inspect.getsource(stream.data_received)
    assert "self._recv_buf_len += len(data)" in received
    assert "self._maybe_pause_reading()" in received
    read = inspect.getsource(stream.read)
    assert "self._recv_buf_len -= " in read and "self._maybe_resume_reading()" in read
    assert "self._limit = self._chan.get_recv_window()" in inspect.getsource(stream.connection_made)
    conn = asyncssh.connection.SSHConnection
    assert "self._transport" in inspect.getsource(conn.connection_made)
    for name in ("_cancel_keepalive_timer", "_reset_keepalive_timer"):
        assert list(inspect.signature(getattr(conn, name)).parameters) == ["self"], name


def test_strict_kex_is_read_from_the_connection_attribute_asyncssh_sets() -> None:
    """asyncssh's connection keeps the strict-kex outcome in ``_strict_kex`` (set in its constructor)."""
    source = inspect.getsource(asyncssh.connection.SSHConnection.__init__)
    assert "self._strict_kex" in source

    class Conn:
        _strict_kex = True

    assert compat.strict_kex_negotiated(Conn())  # type: ignore[arg-type]


def test_a_wrapped_signature_check_sees_the_outcome_of_the_keys_own_verify() -> None:
    """``wrap_signature_check`` routes the key's ``verify`` through our check, which can call the original."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = asyncssh.import_public_key(key.export_public_key())
    seen: list[bool] = []

    def check(data: bytes, sig: bytes, verify: object) -> bool:
        result = bool(verify(data, sig))  # type: ignore[operator]
        seen.append(result)
        return result

    compat.wrap_signature_check(public, check)
    signature = key.sign(b"data", b"ssh-ed25519")
    assert public.verify(b"data", signature) is True
    assert public.verify(b"other", signature) is False
    assert seen == [True, False]


def test_the_stream_read_internals_the_request_take_follows_are_shaped_as_used() -> None:
    """``SFTPHandler.recv_packet`` reads a 4-byte length, refuses one above ``MAX_SFTP_PACKET_LEN`` and reads
    that many bytes exactly; ``SSHStreamSession.read`` takes them from ``_recv_buf[datatype]`` under
    ``_read_locks[datatype]``, stops at an exception in the buffer, and lowers ``_recv_buf_len`` before
    ``_maybe_resume_reading`` (what ``take_request`` does in one step)."""
    source = inspect.getsource(asyncssh.sftp.SFTPHandler.recv_packet)
    assert "await self._reader.readexactly(4)" in source
    assert "if pktlen > MAX_SFTP_PACKET_LEN:" in source
    assert "await self._reader.readexactly(pktlen)" in source and "SSHPacket(packet)" in source
    read = inspect.getsource(asyncssh.stream.SSHStreamSession.read)
    assert "recv_buf = self._recv_buf[datatype]" in read
    assert "async with self._read_locks[datatype]:" in read
    assert "if isinstance(recv_buf[0], Exception):" in read
    assert "self._recv_buf_len -= n" in read and "self._maybe_resume_reading()" in read
    assert "self._session" in inspect.getsource(asyncssh.stream.SSHReader.__init__)


def _buffered(pieces: list[Any]) -> Any:
    """A stand-in for a stream session's receive state holding ``pieces``."""
    session = SimpleNamespace(resumed=0, _eof_received=False, _read_paused=False)
    session._recv_buf = {None: list(pieces)}
    session._recv_buf_len = sum(len(p) for p in pieces if not isinstance(p, Exception))
    session._read_locks = {None: asyncio.Lock()}

    def resume() -> bool:
        session.resumed += 1
        return False

    session._maybe_resume_reading = resume
    return session


def _taken(session: Any) -> bytes | None:
    """What ``take_request`` takes from ``session``, joined (None: nothing)."""
    pieces = asyncssh_requests.take_request(session)
    return None if pieces is None else b"".join(pieces)


@pytest.mark.parametrize("cuts", [[], [4], [3], [9], [1, 2, 3], [4, 20], [36], [10, 36, 40]])
def test_a_request_all_in_the_receive_buffer_is_taken_exactly_as_two_reads_would(cuts: list[int]) -> None:
    """``take_request`` returns the next request (its length taken off) and leaves what follows it in the
    buffer, however the bytes are split into pieces; it takes nothing while the length is split (fewer than
    4 bytes in the first piece), the request is incomplete, an exception precedes its end, or a read holds
    the lock."""
    first, second = os.urandom(32), os.urandom(7)
    stream = (32).to_bytes(4, "big") + first + (7).to_bytes(4, "big") + second
    bounds = [0, *cuts, len(stream)]
    pieces = [memoryview(stream)[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    session = _buffered(pieces)
    taken = _taken(session)
    if len(pieces[0]) < 4:
        assert taken is None and session._recv_buf_len == len(stream) and session.resumed == 0
        return
    assert taken == first and session.resumed == 1
    assert session._recv_buf_len == 11
    assert b"".join(session._recv_buf[None]) == (7).to_bytes(4, "big") + second
    if len(session._recv_buf[None][0]) >= 4:
        assert _taken(session) == second
        assert session._recv_buf_len == 0 and session._recv_buf[None] in ([], [b""], [memoryview(b"")])
    assert _taken(session) is None


async def test_a_request_is_not_taken_past_an_exception_an_incomplete_end_or_a_held_lock() -> None:
    """Nothing is taken when the request is not all there, an exception (end of file) comes before its
    end, a read holds the stream's lock, or the length is above asyncssh's limit (asyncssh's own read
    raises then)."""
    request = (8).to_bytes(4, "big") + b"12345678"
    assert _taken(_buffered([request[:-1]])) is None
    assert _taken(_buffered([request[:6], EOFError(), request[6:]])) is None
    held = _buffered([request])
    async with held._read_locks[None]:
        assert _taken(held) is None
    too_long = (asyncssh.sftp.MAX_SFTP_PACKET_LEN + 1).to_bytes(4, "big")
    assert _taken(_buffered([too_long + b"x" * 16])) is None
    complete = _buffered([request, EOFError()])
    assert _taken(complete) == b"12345678"
    assert isinstance(complete._recv_buf[None][-1], EOFError)


def test_the_stream_wait_internals_the_request_loop_uses_are_shaped_as_used() -> None:
    """``SSHStreamSession._block_read(datatype)`` parks a future in ``_read_waiters[datatype]`` and awaits it;
    data (``_unblock_read``), an end of file (``eof_received``, which sets ``_eof_received``) and a close
    (``connection_lost``: the exception appended, then ``eof_received``) wake it; asyncssh's own pausing of
    the channel sets ``_read_paused`` (what ``waits_in_buffer`` reads)."""
    stream = asyncssh.stream.SSHStreamSession
    block = inspect.getsource(stream._block_read)
    assert "self._read_waiters[datatype] = waiter" in block and "await waiter" in block
    assert "self._unblock_read(datatype)" in inspect.getsource(stream.data_received)
    eof = inspect.getsource(stream.eof_received)
    assert "self._eof_received = True" in eof and "self._unblock_read(datatype)" in eof
    lost = inspect.getsource(stream.connection_lost)
    assert "self._recv_buf[datatype].append(exc)" in lost and "self.eof_received()" in lost
    assert "self._read_paused = True" in inspect.getsource(stream._maybe_pause_reading)


async def test_the_request_loop_waits_in_the_buffer_only_while_the_connection_reads() -> None:
    """``waits_in_buffer``: the next request may be waited for in the receive buffer while it is not all
    there and the session reads on; not after an end of file, with an exception or a split length in the
    buffer, a request above ``WAIT_IN_BUFFER``, a held read lock, or the connection paused (by asyncssh or
    by the node's receive memory: then asyncssh's exact reads take the bytes out of the counted buffer)."""
    part = (1000).to_bytes(4, "big") + b"x" * 500
    assert asyncssh_requests.waits_in_buffer(_buffered([]))
    assert asyncssh_requests.waits_in_buffer(_buffered([part, b"y" * 100]))
    assert not asyncssh_requests.waits_in_buffer(_buffered([part, EOFError()]))
    assert not asyncssh_requests.waits_in_buffer(_buffered([part[:3]]))
    too_long = (asyncssh_requests.WAIT_IN_BUFFER - 3).to_bytes(4, "big")
    assert not asyncssh_requests.waits_in_buffer(_buffered([too_long + b"x" * 16]))
    ended = _buffered([part])
    ended._eof_received = True
    assert not asyncssh_requests.waits_in_buffer(ended)
    paused = _buffered([part])
    paused._read_paused = True
    assert not asyncssh_requests.waits_in_buffer(paused)
    held_back = _buffered([part])
    held_back.reading_paused = lambda: True
    assert not asyncssh_requests.waits_in_buffer(held_back)
    locked = _buffered([part])
    async with locked._read_locks[None]:
        assert not asyncssh_requests.waits_in_buffer(locked)


async def test_a_write_request_hands_its_data_on_as_a_view_of_the_request() -> None:
    """``_process_write`` passes the written bytes to the server as a view into the request packet (no copy),
    ignores bytes after the data, and refuses a request whose data is cut short."""
    seen: list[tuple[object, int, object]] = []

    class Server:
        async def write(self, file_obj: object, offset: int, data: object) -> int:
            seen.append((file_obj, offset, data))
            return 0

    handler = SimpleNamespace(_file_handles={b"h1": "file"}, _server=Server())
    data = os.urandom(1000)
    request = String(b"h1") + UInt64(4096) + String(data) + b"trailing"
    packet = SSHPacket(request)
    await compat._GatewaySFTPHandler._process_write(handler, packet)  # type: ignore[arg-type]
    file_obj, offset, view = seen[0]
    assert (file_obj, offset) == ("file", 4096)
    assert isinstance(view, memoryview) and view.obj is packet.get_full_payload() and bytes(view) == data
    with pytest.raises(PacketDecodeError):
        await compat._GatewaySFTPHandler._process_write(handler, SSHPacket(request[:-500]))  # type: ignore[arg-type]


@pytest.mark.parametrize("cuts", [[], [1], [30], [30, 100, 5000], [27, 28], [3, 9, 26], [4096, 8192]])
async def test_a_write_request_in_pieces_hands_on_its_data_joined_on_its_own(cuts: list[int]) -> None:
    """``request_packet`` makes a write request a ``WriteRequest`` however its pieces cut it: the head
    (type to data length) alone in the packet and the data one ``bytes`` joined from the pieces, which
    ``_process_write`` hands the server as it is; the request loop reads type and id from the head as from a
    whole request. A request with bytes after the data, a short one and any other request are joined whole,
    as before."""
    seen: list[object] = []

    class Server:
        async def write(self, file_obj: object, offset: int, data: object) -> int:
            seen.append(data)
            return 0

    handler = SimpleNamespace(_file_handles={b"h1": "file"}, _server=Server())
    data = os.urandom(12000)
    request = bytes([FXP_WRITE]) + UInt32(77) + String(b"h1") + UInt64(4096) + String(data)
    bounds = [0, *cuts, len(request)]
    pieces: list[bytes | memoryview] = [memoryview(request)[a:b] for a, b in itertools.pairwise(bounds)]
    packet = asyncssh_requests.request_packet(pieces)
    assert (
        isinstance(packet, asyncssh_requests.WriteRequest)
        and type(packet.data) is bytes
        and packet.data == data
    )
    assert packet.get_byte() == FXP_WRITE and packet.get_uint32() == 77
    await compat._GatewaySFTPHandler._process_write(handler, packet)  # type: ignore[arg-type]
    assert seen[0] is packet.data
    for other in (request + b"trailing", request[:-1], b"\x03" + request[1:]):
        whole = asyncssh_requests.request_packet([memoryview(other)[:100], memoryview(other)[100:]])
        assert type(whole) is SSHPacket and whole.get_full_payload() == other


def test_sftp_replies_are_sent_through_the_handler_method_the_gateway_replaces() -> None:
    """``SFTPHandler.send_packet(pkttype, pktid, *args)`` writes ``UInt32(len) + payload`` to ``_writer`` and
    logs it with ``log_sent_packet``; every reply of the request loop goes through it."""
    source = inspect.getsource(asyncssh.sftp.SFTPHandler.send_packet)
    assert "self._writer.write(UInt32(len(payload)) + payload)" in source
    assert "self.log_sent_packet(pkttype, pktid, payload)" in source
    assert list(inspect.signature(asyncssh.sftp.SFTPHandler.send_packet).parameters) == [
        "self", "pkttype", "pktid", "args",
    ]  # fmt: skip
    assert "self.send_packet(return_type, pktid" in inspect.getsource(SFTPServerHandler._process_packet)


async def _sftp_server(tmp_path: Any, writes: list[int]) -> asyncssh.SSHAcceptor:
    """An asyncssh server whose sessions run the gateway's SFTP handler over a plain ``SFTPServer`` in
    ``tmp_path``, counting write requests into ``writes``."""

    class CountingServer(asyncssh.SFTPServer):
        def write(self, file_obj: object, offset: int, data: bytes) -> int:
            writes.append(len(data))
            return super().write(file_obj, offset, bytes(data))  # type: ignore[no-any-return]

    class Sessions(Sink):
        def session_requested(self) -> compat.SFTPOnlySession:
            return compat.SFTPOnlySession(lambda chan: CountingServer(chan, chroot=str(tmp_path).encode()))

    return await asyncssh.create_server(
        Sessions, "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")]
    )


async def test_pipelined_requests_are_answered_in_few_channel_packets(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small replies to requests handled in one turn of the event loop leave in one channel data packet (each
    packet costs an encryption, an ``SSH_MSG_IGNORE`` and a socket write): a pipelined upload of 4 KiB writes
    gets every reply, in order, in far fewer packets than requests."""
    sent: list[int] = []
    original = asyncssh.channel.SSHServerChannel.send_packet

    def counting(self: Any, pkttype: int, *args: bytes) -> None:
        if pkttype == asyncssh.constants.MSG_CHANNEL_DATA:
            sent.append(sum(map(len, args)))
        original(self, pkttype, *args)

    monkeypatch.setattr(asyncssh.channel.SSHServerChannel, "send_packet", counting)
    writes: list[int] = []
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    payload = os.urandom(4 << 20)
    (tmp_path / "in" / "upload.bin").write_bytes(payload)
    server = await _sftp_server(tmp_path / "out", writes)
    try:
        port = server.sockets[0].getsockname()[1]
        async with (
            asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u") as conn,
            conn.start_sftp_client() as sftp,
        ):
            await sftp.put(
                str(tmp_path / "in" / "upload.bin"), "upload.bin", block_size=4096, max_requests=64
            )
    finally:
        server.close()
        await server.wait_closed()
    assert (tmp_path / "out" / "upload.bin").read_bytes() == payload
    assert len(writes) == 1024
    assert len(sent) < len(writes) // 4, (len(sent), len(writes))


async def test_every_reply_leaves_before_the_session_closes(tmp_path: Any) -> None:
    """Requests followed at once by end of file (a client that does not wait) are each answered, in order,
    before the gateway closes the channel: replies waiting for the end of the loop's turn go out first."""
    writes: list[int] = []
    server = await _sftp_server(tmp_path, writes)

    def request(kind: int, request_id: int, *fields: bytes) -> bytes:
        body = bytes([kind]) + request_id.to_bytes(4, "big") + b"".join(fields)
        return len(body).to_bytes(4, "big") + body

    handle = bytes(4)  # asyncssh numbers its handles from 0
    data = os.urandom(1000)
    stream = b"".join(
        [
            b"\x00\x00\x00\x05\x01\x00\x00\x00\x03",  # INIT, version 3
            request(3, 1, String(b"f.bin"), (0x1A).to_bytes(4, "big"), (0).to_bytes(4, "big")),  # OPEN
            *(request(6, 2 + n, String(handle), UInt64(n * 1000), String(data)) for n in range(20)),  # WRITE
            request(4, 99, String(handle)),  # CLOSE
        ]
    )
    try:
        port = server.sockets[0].getsockname()[1]
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u") as conn:
            writer, reader, _ = await conn.open_session(subsystem="sftp", encoding=None)
            writer.write(stream)
            writer.write_eof()
            replies = await asyncio.wait_for(reader.read(), 30)
    finally:
        server.close()
        await server.wait_closed()
    ids: list[int] = []
    kinds: list[int] = []
    while replies:
        size = int.from_bytes(replies[:4], "big")
        kinds.append(replies[4])
        if replies[4] != 2:  # VERSION has no request id
            ids.append(int.from_bytes(replies[5:9], "big"))
        replies = replies[4 + size :]
    assert kinds == [2, 102, *[101] * 20, 101]  # VERSION, HANDLE, STATUS for each WRITE and the CLOSE
    assert ids == [1, *range(2, 22), 99]
    assert (tmp_path / "f.bin").read_bytes() == data * 20


def test_packet_descriptions_are_made_where_asyncssh_logs_them() -> None:
    """``SSHPacketLogger._log_packet(msg, pkttype, pktid, packet, note)`` is the one place that describes
    packets (no subclass the gateway uses overrides it), and ``SSHLogger.packet`` logs only at debug level 3,
    a class attribute ``set_debug_level`` sets."""
    assert list(inspect.signature(asyncssh.packet.SSHPacketLogger._log_packet).parameters) == [
        "self", "msg", "pkttype", "pktid", "packet", "note",
    ]  # fmt: skip
    for cls in (asyncssh.connection.SSHConnection, asyncssh.channel.SSHChannel, asyncssh.sftp.SFTPHandler):
        assert all(
            "_log_packet" not in vars(base)
            for base in cls.__mro__[:-1]
            if base is not asyncssh.packet.SSHPacketLogger
        )
    assert "if self._debug_level >= 3:" in inspect.getsource(asyncssh.logging.SSHLogger.packet)
    assert "cls._debug_level = level" in inspect.getsource(asyncssh.logging.SSHLogger.set_debug_level)


def test_packets_are_described_only_when_the_debug_level_logs_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After ``install_quiet_packet_log`` a packet is not described (no ``plural``, no formatting) below debug
    level 3, and is logged as before at level 3."""
    compat.install_quiet_packet_log()
    described: list[int] = []
    real_plural = asyncssh.packet.plural

    def counting_plural(length: int, label: str) -> str:
        described.append(length)
        return real_plural(length, label)  # type: ignore[no-any-return]

    monkeypatch.setattr(asyncssh.packet, "plural", counting_plural)
    handler = SFTPServerHandler.__new__(SFTPServerHandler)
    monkeypatch.setattr(
        SFTPServerHandler, "logger", property(lambda self: asyncssh.logging.logger.get_child("sftp"))
    )
    packet = SSHPacket(bytes(32 * 1024))
    handler.log_received_packet(FXP_WRITE, 5, packet)
    assert described == []
    asyncssh.set_debug_level(3)
    try:
        with caplog.at_level(logging.DEBUG, logger="asyncssh"):
            handler.log_received_packet(FXP_WRITE, 5, packet)
    finally:
        asyncssh.set_debug_level(1)
    assert described == [32 * 1024]
    assert any("Received FXP_WRITE (6), 32768 bytes" in record.getMessage() for record in caplog.records)
