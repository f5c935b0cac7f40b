"""The asyncssh internals of the gateway's SSH receive path and packet ciphers (the receive-path items of
eftgw/sftp/asyncssh_compat.py; eftgw/sftp/asyncssh_ciphers.py, eftgw/sftp/asyncssh_data_path.py) are still
there and shaped as used, and the gateway's ciphers compute exactly what asyncssh's compute.

Split from tests/sftp/test_asyncssh_compat.py, which checks the SFTP request loop and reply internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from typing import Any

import asyncssh
import pytest
from asyncssh_sink import sink_connection

from eftgw.sftp import asyncssh_ciphers as ciphers
from eftgw.sftp import asyncssh_compat as compat
from eftgw.sftp import asyncssh_data_path

pytestmark = pytest.mark.once  # asyncssh's internals, no gateway: the backend does not matter here


def test_the_receive_path_internals_are_shaped_as_used() -> None:
    """``SSHConnection``: ``_recv_data`` loops ``_recv_handler`` over ``_inpbuf``; ``_recv_pkthdr`` wants
    ``_recv_blocksize`` bytes, reads the length from the first 4 and bounds it by ``_max_recv_pktlen``, and
    ``_recv_packet`` ``4 + _pktlen + _recv_macsize - _recv_blocksize``;
    ``_finish_recv_packet`` resumes parsing only when ``_inpbuf`` holds bytes; ``_cleanup`` empties it."""
    conn = asyncssh.connection.SSHConnection
    assert "while self._inpbuf and self._recv_handler()" in inspect.getsource(conn._recv_data)
    for name in ("_reset_keepalive_timer", "_send_disconnect", "_force_close", "internal_error"):
        assert name in inspect.getsource(conn._recv_data), name
    header_step = inspect.getsource(conn._recv_pkthdr)
    assert "len(self._inpbuf) < self._recv_blocksize" in header_step
    # what asyncssh_data_path.recv_whole does in its place: the length from the first 4 bytes, the same bound
    assert "decrypt_header(self._recv_seq,\n" in header_step and "self._packet, 4)" in header_step
    assert "if self._pktlen > self._max_recv_pktlen:" in header_step
    assert "self._recv_handler = self._recv_packet" in header_step
    source = inspect.getsource(conn._recv_packet)
    assert "rem = 4 + self._pktlen + self._recv_macsize - self._recv_blocksize" in source
    assert "self._recv_handler = lambda: False" in source
    finish = inspect.getsource(conn._finish_recv_packet)
    assert "if is_async and self._inpbuf:" in finish
    # what recv_whole does in its place for channel data once _auth_final is set: the next sequence number
    body = [line.strip() for line in finish.split('"""')[-1].splitlines() if line.strip()]
    assert body == [
        "if pkttype > MSG_USERAUTH_LAST:",
        "self._auth_final = True",
        "if self._transport:",
        "if self._recv_seq == 0xffffffff and not self._recv_encryption:",
        "raise ProtocolError('Sequence rollover before kex complete')",
        "if pkttype == MSG_NEWKEYS and self._strict_kex:",
        "self._recv_seq = 0",
        "else:",
        "self._recv_seq = (seq + 1) & 0xffffffff",
        "self._recv_handler = self._recv_pkthdr",
        "if is_async and self._inpbuf:",
        "self._recv_data()",
    ]
    assert "self._inpbuf += data" in inspect.getsource(conn.data_received)
    assert "self._inpbuf = b''" in inspect.getsource(conn._cleanup)
    assert list(inspect.signature(conn.data_received).parameters) == ["self", "data", "datatype"]
    assert list(inspect.signature(conn.connection_made).parameters) == ["self", "transport"]
    # what SOCKET_READ sets: asyncio's selector transport reads max_size bytes at a time
    reading = inspect.getsource(asyncio.selector_events._SelectorSocketTransport._read_ready__data_received)
    assert "self._sock.recv(self.max_size)" in reading


def test_the_receive_queue_hands_out_exactly_the_bytes_asked_for_in_order() -> None:
    """``_ReceiveQueue.take`` returns the front bytes across chunk boundaries, never more than asked."""
    queue = compat._ReceiveQueue()
    for chunk in (b"abc", b"", b"defgh", b"ij"):
        queue.append(chunk)
    assert queue.size == 10
    assert queue.take(2) == b"ab"
    assert queue.take(4) == b"cdef"
    assert queue.take(100) == b"ghij"
    assert queue.size == 0 and queue.take(5) == b""


def test_the_receive_queue_hands_out_views_inside_one_chunk_and_copies_only_across_chunks() -> None:
    """``_ReceiveQueue.take_view`` returns a view (no copy) of bytes inside one chunk, the chunk itself when
    asked for all of it, and joined bytes across chunks; in order, with the size kept."""
    queue = compat._ReceiveQueue()
    for chunk in (b"abcdef", b"ghij", b"klm"):
        queue.append(chunk)
    first = queue.take_view(2)
    assert isinstance(first, memoryview) and first == b"ab"
    last_of_chunk = queue.take_view(4)
    assert isinstance(last_of_chunk, memoryview) and last_of_chunk == b"cdef"
    whole = queue.take_view(4)
    assert isinstance(whole, bytes) and whole == b"ghij"
    queue.append(b"nop")
    across = queue.take_view(4)
    assert isinstance(across, bytes) and across == b"klmn"
    assert queue.size == 2 and queue.take_view(10) == b"op" and queue.size == 0


def test_the_receive_queue_shows_its_first_chunk_and_peeks_across_chunks() -> None:
    """What ``asyncssh_data_path.recv_whole`` uses: ``front`` is the first chunk itself (not a copy) with the
    offset of its first byte not taken, ``advance`` takes bytes of it (dropping it when all are taken), and
    ``peek`` joins bytes across chunks without taking them."""
    queue = compat._ReceiveQueue()
    assert queue.front() == (b"", 0)
    first = b"abcdef"
    for chunk in (first, b"gh", b"ijk"):
        queue.append(chunk)
    chunk, offset = queue.front()
    assert chunk is first and offset == 0
    queue.advance(4)
    assert queue.front() == (first, 4) and queue.size == 7
    assert queue.peek(5) == b"efghi" and queue.size == 7 and queue.peek(99) == b"efghijk"
    queue.advance(2)
    assert queue.front() == (b"gh", 0) and queue.size == 5
    assert queue.take(5) == b"ghijk" and queue.front() == (b"", 0)


@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"])
async def test_a_packet_whose_tag_does_not_verify_ends_the_connection_and_delivers_nothing(
    cipher: str,
) -> None:
    """A channel data packet whose tag is wrong (one bit of it flipped by the client) is refused on the
    gateway's one-step receive path (``asyncssh_data_path.recv_whole``) as asyncssh refuses it: the
    connection is closed, and the session never sees that packet's data."""
    compat.install_receive_buffer()
    ciphers.install_packet_ciphers()
    received = bytearray()
    refused: list[BaseException] = []  # what the one-step path raised
    recv_whole = asyncssh_data_path.recv_whole

    def recording_whole(self: Any, queue: Any) -> bool | None:
        try:
            return recv_whole(self, queue)
        except BaseException as exc:
            refused.append(exc)
            raise

    async def sink(process: asyncssh.SSHServerProcess[bytes]) -> None:
        with contextlib.suppress(Exception):
            while chunk := await process.stdin.read(1 << 20):
                received.extend(chunk)

    async with sink_connection(sink, cipher) as conn:
        process = await conn.create_process(encoding=None)
        process.stdin.write(b"before")
        for _ in range(600):
            if received:
                break
            await asyncio.sleep(0.05)
        sending: Any = conn._send_encryption  # type: ignore[attr-defined]
        encrypt = sending.encrypt_packet

        def flipping(seq: int, header: bytes, packet: bytes) -> tuple[bytes, bytes]:
            wire, mac = encrypt(seq, header, packet)
            return wire, bytes([mac[0] ^ 1]) + mac[1:]

        asyncssh_data_path.recv_whole = recording_whole  # type: ignore[assignment]
        try:
            sending.encrypt_packet = flipping
            process.stdin.write(b"after")
            await asyncio.wait_for(conn.wait_closed(), 30)
        finally:
            asyncssh_data_path.recv_whole = recv_whole  # type: ignore[assignment]
    assert bytes(received) == b"before"
    assert [type(exc) for exc in refused] == [asyncssh.MACError]  # refused on the one-step path


@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"])
async def test_server_connections_parse_each_packet_from_exactly_its_bytes(
    cipher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the receive buffer installed, a server connection whose socket reads carry many pipelined
    packets still gets every byte, in order, and its packet parser is handed one packet at a time: no
    ``_inpbuf`` holding the packets after it (which asyncssh would copy again for each packet), whether a
    packet goes through asyncssh's steps or is taken whole from a view of the socket read
    (``asyncssh_data_path.recv_whole``)."""
    compat.install_receive_buffer()
    seen_after_packet: list[int] = []
    original = asyncssh.connection.SSHConnection._recv_packet

    def recording(self: Any) -> bool:
        wanted = 4 + self._pktlen + self._recv_macsize - self._recv_blocksize
        seen_after_packet.append(len(self._inpbuf) - wanted)
        return original(self)

    monkeypatch.setattr(asyncssh.connection.SSHServerConnection, "_recv_packet", recording)
    whole: list[int] = []  # packets taken in one step from a view of the socket read they lie in
    recv_whole = asyncssh_data_path.recv_whole

    def recording_whole(self: Any, queue: Any) -> bool | None:
        took = recv_whole(self, queue)
        if took:
            whole.append(len(self._inpbuf))  # nothing left in ``_inpbuf`` after the packet
        return took

    monkeypatch.setattr(asyncssh_data_path, "recv_whole", recording_whole)
    received = bytearray()
    done = asyncio.Event()

    async def sink(process: asyncssh.SSHServerProcess[bytes]) -> None:
        while chunk := await process.stdin.read(1 << 20):
            received.extend(chunk)
        process.exit(0)
        done.set()

    payload = os.urandom(4 << 20)
    async with (
        sink_connection(sink, cipher) as conn,
        conn.create_process(encoding=None) as process,
    ):
        for start in range(0, len(payload), 32 * 1024):  # pipelined, as OpenSSH's client sends
            process.stdin.write(payload[start : start + 32 * 1024])
        process.stdin.write_eof()
        await asyncio.wait_for(done.wait(), 60)
    assert bytes(received) == payload
    data_packets = [extra for extra in seen_after_packet if extra >= 0]
    assert len(data_packets) + len(whole) >= 128
    assert max(seen_after_packet) == 0
    assert not any(whole)


def _packets() -> list[tuple[bytes, bytes]]:
    """(encrypted-length header, padded payload) pairs of the sizes SFTP sends: tiny, 32 KiB, 256 KiB."""
    return [
        (len(body).to_bytes(4, "big"), body)
        for body in (os.urandom(12), os.urandom(32 * 1024 - 4), os.urandom(256 * 1024 + 4))
    ]


def _decrypt(enc: Any, seq: int, wire: bytes, mac: bytes, block: int) -> bytes | None:
    """Receive ``wire`` as asyncssh's connection does: the first block's header, then the packet."""
    first, _length = enc.decrypt_header(seq, wire[:block], 4)
    return enc.decrypt_packet(seq, first, wire[block:], 4, mac)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("cipher_name", "theirs", "ours", "block"),
    [
        ("chacha20-poly1305", asyncssh.encryption.ChachaEncryption, ciphers._ChachaPoly, 8),
        ("aes128-gcm", asyncssh.encryption.GCMEncryption, ciphers._AesGcm, 16),
        ("aes256-gcm", asyncssh.encryption.GCMEncryption, ciphers._AesGcm, 16),
    ],
)
def test_the_gateway_ciphers_compute_exactly_what_asyncssh_computes(
    cipher_name: str, theirs: Any, ours: Any, block: int
) -> None:
    """``_ChachaPoly`` and ``_AesGcm`` produce the same bytes and tags as asyncssh's ``ChachaEncryption`` and
    ``GCMEncryption``, decrypt what those encrypt, packet after packet (sequence numbers and the GCM
    invocation counter wrapping; one object for all packets, as a connection uses it), also when given a
    whole packet at once (``packet_length`` and ``decrypt_whole``), and refuse a packet whose tag is wrong."""
    key_size, iv_size, _ = asyncssh.crypto.get_cipher_params(cipher_name)
    key, iv = os.urandom(key_size), os.urandom(iv_size)
    if iv_size:
        iv = iv[:4] + (2**64 - 2).to_bytes(8, "big")  # the invocation counter wraps during the test
    theirs_send, ours_send = theirs.new(cipher_name, key, iv), ours.new(cipher_name, key, iv)
    theirs_recv, ours_recv = theirs.new(cipher_name, key, iv), ours.new(cipher_name, key, iv)
    whole_recv = ours.new(cipher_name, key, iv)  # receiving as asyncssh_data_path.recv_whole does
    for seq, (header, body) in enumerate(_packets() + _packets(), start=2**32 - 3):
        seq &= 0xFFFFFFFF
        wire, mac = theirs_send.encrypt_packet(seq, header, body)
        assert ours_send.encrypt_packet(seq, header, body) == (wire, mac)
        assert _decrypt(ours_recv, seq, wire, mac, block) == body
        assert _decrypt(theirs_recv, seq, wire, mac, block) == body
        assert whole_recv.packet_length(seq, memoryview(wire)[:4]) == len(body)
        assert whole_recv.decrypt_whole(seq, memoryview(wire + mac), len(mac)) == body
    wire, mac = ours.new(cipher_name, key, iv).encrypt_packet(7, *_packets()[1])
    forged = bytes([mac[0] ^ 1]) + mac[1:]
    assert _decrypt(ours.new(cipher_name, key, iv), 7, wire, forged, block) is None
    assert ours.new(cipher_name, key, iv).decrypt_whole(7, memoryview(wire + forged), len(mac)) is None


def test_installing_the_gateway_ciphers_replaces_exactly_chacha_and_gcm() -> None:
    """After ``install_packet_ciphers`` asyncssh's table maps chacha20-poly1305 and both AES-GCM names to ours
    and leaves every other algorithm as it was."""
    before = dict(asyncssh.encryption._enc_params)
    ciphers.install_packet_ciphers()
    after = asyncssh.encryption._enc_params
    assert after[b"chacha20-poly1305@openssh.com"][0] is ciphers._ChachaPoly
    assert after[b"aes128-gcm@openssh.com"][0] is ciphers._AesGcm
    assert after[b"aes256-gcm@openssh.com"][0] is ciphers._AesGcm
    replaced = {b"chacha20-poly1305@openssh.com", b"aes128-gcm@openssh.com", b"aes256-gcm@openssh.com"}
    for name, entry in before.items():
        if name not in replaced:
            assert after[name] == entry
    signature = list(inspect.signature(asyncssh.encryption.ChachaEncryption.decrypt_packet).parameters)
    assert signature == ["self", "seq", "first", "rest", "header_len", "mac"]
    assert list(inspect.signature(asyncssh.encryption.GCMEncryption.new).parameters) == [
        "cipher_name", "key", "iv", "mac_alg", "mac_key", "etm",
    ]  # fmt: skip


def test_an_arena_is_taken_again_only_once_no_view_of_it_is_left() -> None:
    """``Arenas.take`` hands out an arena again only when nothing refers to it: while a view cut from it
    (or a view of that view) lives, another arena is made; once they are gone, the same arena comes back.
    The pool keeps at most its limit; arenas beyond it are made when all are in use."""
    arenas = ciphers.Arenas(size=1024, pool=2)
    first = arenas.take(100)
    piece = first[10:20][2:]
    del first
    second = arenas.take(100)
    assert second.obj is not piece.obj and arenas.made == 2
    third = arenas.take(100)
    assert arenas.made == 3 and len(arenas._pool) == 2  # both pooled ones in use: a third made, not kept
    kept = id(piece.obj)  # (a reference to the arena itself would keep it in use, as a view does)
    del piece, third
    again = arenas.take(100)
    assert id(again.obj) == kept and arenas.made == 3
    assert len(arenas.take(4096)) == 4096 and arenas.made == 4  # larger than an arena: one of its own


@pytest.mark.parametrize(
    ("cipher_name", "theirs", "ours"),
    [
        ("chacha20-poly1305", asyncssh.encryption.ChachaEncryption, ciphers._ChachaPoly),
        ("aes128-gcm", asyncssh.encryption.GCMEncryption, ciphers._AesGcm),
    ],
)
def test_whole_packets_are_decrypted_into_the_arena_one_after_the_other(
    cipher_name: str, theirs: Any, ours: Any
) -> None:
    """``decrypt_whole`` puts each packet after the previous one in the connection's arena, as a view of it
    that keeps its bytes while later packets are decrypted, also across a change of arena."""
    key_size, iv_size, _ = asyncssh.crypto.get_cipher_params(cipher_name)
    key, iv = os.urandom(key_size), os.urandom(iv_size)
    sender, receiver = theirs.new(cipher_name, key, iv), ours.new(cipher_name, key, iv)
    bodies = [os.urandom(16 * 1024 - 12) for _ in range(40)]  # 640 KiB: three arenas
    views = []
    for seq, body in enumerate(bodies):
        wire, mac = sender.encrypt_packet(seq, len(body).to_bytes(4, "big"), body)
        views.append(receiver.decrypt_whole(seq, memoryview(wire + mac), len(mac)))
    assert [bytes(view) for view in views] == bodies
    assert views[1].obj is views[0].obj and len({id(view.obj) for view in views}) >= 3
