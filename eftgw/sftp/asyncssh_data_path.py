"""The channel-data packets of SFTP sessions, received without asyncssh's per-packet copies and objects.

Part of the gateway's use of asyncssh internals (see 9. in :mod:`eftgw.sftp.asyncssh_compat`, which installs
it and whose version check guards it). asyncssh's ``SSHConnection._recv_packet`` copies each packet's bytes
four times between the socket and the session (the rest of the packet out of ``_inpbuf``, the first block
joined to it for decryption, the payload cut from its padding, the channel data cut from the payload), and
builds an ``SSHPacket`` and dispatches it through the channel's handler table. OpenSSH's ``sftp`` sends
about 33,000 channel data packets per GiB, each of them taking that path.

:func:`recv_packet` takes its place on server connections. For a ``SSH_MSG_CHANNEL_DATA`` packet encrypted
with one of the gateway's ciphers (which decrypt into two parts instead of one joined ``bytes``), after
authentication, without compression, to a channel whose session asked for it (:func:`deliver_views`), it
checks what asyncssh's ``_process_data`` checks (channel open, window, exact length) and hands the
channel's ``_accept_data`` a view of the decrypted data: one copy, the decryption's. Every other packet, and
one failing any check, goes through asyncssh's own ``_recv_packet`` with the bytes already decrypted (a
stand-in for the cipher returns them), so that errors, key exchange and every other message keep asyncssh's
handling exactly.

:func:`recv_whole` goes further for the gateway's ciphers: it waits in the receive queue until a whole
packet is there, then reads its length, decrypts it in one call (from a view of the socket read when the
packet lies in one: about seven in eight of OpenSSH's 32 KiB packets in 256 KiB reads; else joined once) and
hands channel data on as above, without asyncssh's header step and the copies between (the length block
copied out, the rest joined to it again for AES-GCM, whose ``decrypt`` wants the tag attached).

The data of such a packet reaches the session through :func:`deliver`: what asyncssh's channel
``_accept_data`` and ``_deliver_data`` and the stream session's ``data_received`` do for it (the window
taken, the view appended to the session's receive buffer, its reader woken), in one call instead of four.
The session's ``_maybe_pause_reading`` (where the gateway's sessions count their buffer for the node's
receive memory, :mod:`eftgw.sftp.flow`) runs once after all the packets of one socket read were parsed
(:func:`settle`) instead of after each: pausing the socket takes effect at the next read in either case, so
what a connection holds is the same. A packet that needs more (a window adjust, an empty or closed channel,
a paused channel, a decoding session) goes through ``_accept_data`` as before.

The send side: asyncssh sends an ``SSH_MSG_IGNORE`` packet before every packet after key exchange when
encrypting, whatever the cipher (:func:`send_packet` skips it for the AEAD ciphers chacha20-poly1305 and
AES-GCM, whose objects say so with ``ignore_before_packets = False``). That empty packet is a countermeasure
for CBC ciphers, whose next packet's IV an attacker could otherwise know; an AEAD cipher's nonce is the
sequence number or a counter, and OpenSSH sends no such packets. With it every SFTP reply cost two
encryptions and two socket writes.

(internals: ``SSHConnection._recv_packet``, ``send_packet`` and the ``MSG_IGNORE`` it sends from inside,
``_send_encryption``, ``_recv_encryption``, ``_recv_seq``, ``_inpbuf``, ``_packet``,
``_pktlen``, ``_recv_macsize``, ``_recv_blocksize``, ``_decompressor``, ``_auth_complete``, ``_channels``,
``_finish_recv_packet`` (and what it does for channel data once ``_auth_final``: the sequence number),
``_auth_final``, ``_transport``, ``_recv_pkthdr``, ``_max_recv_pktlen``, ``_recv_handler``;
``SSHChannel._recv_state``, ``_recv_window``, ``_accept_data``, ``_init_recv_window``, ``_recv_paused``,
``_send_state``, ``_encoding``, ``_session``; ``SSHStreamSession._recv_buf``, ``_recv_buf_len``,
``_read_waiters``, ``_maybe_pause_reading``; ``SSHLogger._debug_level``.)
"""

from __future__ import annotations

from typing import Any, Protocol

from asyncssh.connection import SSHServerConnection
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_IGNORE, MSG_KEX_LAST
from asyncssh.logging import SSHLogger

_ASYNCSSH_RECV_PACKET = SSHServerConnection._recv_packet
_ASYNCSSH_SEND_PACKET = SSHServerConnection.send_packet
_ASYNCSSH_RECV_PKTHDR = SSHServerConnection._recv_pkthdr
_SKIP_IGNORE = "_eftgw_skip_ignore"
_HEAD = 10  # padding length, message type, recipient channel, data length
_VIEWS = "_eftgw_data_views"
_UNSETTLED = "_eftgw_unsettled"  # the session that received data since the connection last settled
_CLOSING = frozenset({"close_pending", "closed"})  # asyncssh's ``_accept_data`` drops data in these


class PartsCipher(Protocol):
    """A packet cipher that can decrypt a packet into two parts (the packet is ``head + body``)."""

    def decrypt_parts(
        self, seq: int, first: bytes, rest: bytes | memoryview, header_len: int, mac: bytes | memoryview
    ) -> tuple[bytes, bytes] | None: ...


class _Decrypted:
    """Stands in for a connection's cipher while asyncssh's ``_recv_packet`` handles a packet decrypted
    already: it returns that packet (None: the tag was wrong)."""

    __slots__ = ("_packet",)

    def __init__(self, packet: bytes | None) -> None:
        self._packet = packet

    def decrypt_packet(self, seq: int, first: bytes, rest: Any, header_len: int, mac: Any) -> bytes | None:
        return self._packet


def deliver_views(channel: Any) -> None:
    """Let this channel's data reach its session as views (``memoryview``) of the decrypted packets; for
    sessions that only join or slice what they receive."""
    channel.__dict__[_VIEWS] = True


def takes_views(conn: Any) -> bool:
    """Whether the connection's parser waits for the rest of a packet in :func:`recv_packet` with a cipher
    of the gateway: then ``_inpbuf`` may be a ``memoryview`` (asyncssh's own parsing needs ``bytes``)."""
    return getattr(conn._recv_handler, "__func__", None) is recv_packet and hasattr(
        conn._recv_encryption, "decrypt_parts"
    )


def _asyncssh_with(conn: Any, cipher: Any, packet: bytes | None) -> bool:
    """asyncssh's ``_recv_packet`` for a packet ``cipher`` decrypted already."""
    if isinstance(conn._inpbuf, memoryview):
        conn._inpbuf = conn._inpbuf.tobytes()
    stand_in = _Decrypted(packet)
    conn._recv_encryption = stand_in
    try:
        return bool(_ASYNCSSH_RECV_PACKET(conn))
    finally:
        if conn._recv_encryption is stand_in:  # a NEWKEYS packet installs the next cipher: keep that one
            conn._recv_encryption = cipher


def _takes_data(self: Any) -> bool:
    """Whether channel data of this connection may take the gateway's path at all (what
    :func:`_data_channel` checks of the connection: no compression, logged in, asyncssh not logging data)."""
    return (
        not self._decompressor
        and bool(self._auth_complete)
        and SSHLogger._debug_level < 2  # asyncssh logs received data from level 2 on: let it
    )


def _open_channel(channels: Any, prefix: bytes, total: int) -> Any:
    """The channel whose session takes views, if ``prefix`` (the first ``_HEAD`` bytes of a decrypted packet
    of ``total`` bytes) begins channel data for it that asyncssh's ``_process_data`` would accept (channel
    open, within its window, exact length); else None. ``channels``: the connection's ``_channels``."""
    if len(prefix) != _HEAD or prefix[1] != MSG_CHANNEL_DATA:
        return None
    datalen = int.from_bytes(prefix[6:10], "big")
    channel = channels.get(int.from_bytes(prefix[2:6], "big"))
    if (
        channel is None
        or not channel.__dict__.get(_VIEWS)
        or not prefix[0]  # asyncssh reads no payload then, and fails the packet
        or _HEAD + datalen != total - prefix[0]  # the data ends where the padding begins
        or channel._recv_state != "open"
        or datalen > channel._recv_window
    ):
        return None
    return channel


def _data_channel(self: Any, prefix: bytes, total: int) -> Any:
    """The channel whose session takes views, if ``prefix`` (the first ``_HEAD`` bytes of a decrypted packet
    of ``total`` bytes) begins channel data that :func:`recv_packet` may hand it; else None (the packet goes
    to asyncssh). Checks what asyncssh's ``_process_data`` checks (channel open, window, exact length)."""
    return _open_channel(self._channels, prefix, total) if _takes_data(self) else None


def recv_packet(self: Any) -> bool:
    """asyncssh's ``SSHConnection._recv_packet``, with channel data of the gateway's sessions taken as views
    (see above). Returns whether parsing may go on, as asyncssh's."""
    cipher = self._recv_encryption
    decrypt_parts = getattr(cipher, "decrypt_parts", None)
    if decrypt_parts is None:
        if isinstance(self._inpbuf, memoryview):
            self._inpbuf = self._inpbuf.tobytes()
        return bool(_ASYNCSSH_RECV_PACKET(self))
    inpbuf = self._inpbuf
    macsize = self._recv_macsize
    rem = 4 + self._pktlen + macsize - self._recv_blocksize
    if len(inpbuf) < rem:
        return False
    seq = self._recv_seq
    view = memoryview(inpbuf)
    parts = decrypt_parts(seq, self._packet, view[: rem - macsize], 4, view[rem - macsize : rem])
    if parts is None:
        return _asyncssh_with(self, cipher, None)
    head, body = parts
    taken = _HEAD - len(head)
    prefix = head + body[:taken] if taken > 0 else head
    channel = None if taken < 0 else _data_channel(self, prefix, len(head) + len(body))
    if channel is None:
        return _asyncssh_with(self, cipher, head + body if head else body)
    self._inpbuf = inpbuf[rem:] if len(inpbuf) > rem else b""
    if isinstance(self._inpbuf, memoryview):
        self._inpbuf = self._inpbuf.tobytes()
    self._packet = b""
    deliver(self, channel, memoryview(body)[taken : taken + int.from_bytes(prefix[6:10], "big")])
    self._finish_recv_packet(MSG_CHANNEL_DATA, seq)
    return True


def deliver(conn: Any, channel: Any, data: memoryview) -> None:
    """``channel._accept_data(data)`` for a channel whose session takes views, in one step (see above):
    the window taken, ``data`` appended to the session's receive buffer and its reader woken. The session's
    ``_maybe_pause_reading`` waits for :func:`settle`. Data that needs more than that (the window to adjust,
    none, a closing or paused channel, a decoding session) goes through ``_accept_data``."""
    size = len(data)
    window = channel._recv_window - size
    session = channel._session
    if (
        not size
        or window < channel._init_recv_window / 2  # asyncssh's _deliver_data sends a window adjust
        or channel._recv_paused
        or channel._send_state in _CLOSING
        or channel._encoding
        or session is None
    ):
        channel._accept_data(data)
        return
    channel._recv_window = window
    session._recv_buf[None].append(data)
    session._recv_buf_len += size
    waiter = session._read_waiters[None]
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
    state = conn.__dict__
    unsettled = state.get(_UNSETTLED)
    if unsettled is not session:
        if unsettled is not None:
            unsettled._maybe_pause_reading()
        state[_UNSETTLED] = session


def settle(conn: Any) -> None:
    """After the packets of a socket read were parsed: the ``_maybe_pause_reading`` of the session that
    :func:`deliver` gave data to since the last call (what asyncssh's ``data_received`` calls each time)."""
    session = conn.__dict__.pop(_UNSETTLED, None)
    if session is not None:
        session._maybe_pause_reading()


class WholeQueue(Protocol):
    """What a connection read and has not parsed (``eftgw.sftp.asyncssh_compat._ReceiveQueue``)."""

    size: int

    def take(self, n: int) -> bytes:
        """The first ``n`` bytes, joined."""
        ...

    def peek(self, n: int) -> bytes:
        """The first ``n`` bytes, joined, left in the queue."""
        ...

    def front(self) -> tuple[bytes, int]:
        """The first chunk and the offset of its first byte not taken (``b"", 0``: empty)."""
        ...

    def advance(self, n: int) -> None:
        """Take ``n`` bytes of the first chunk."""
        ...


def recv_whole(self: Any, queue: WholeQueue) -> bool | None:
    """The next packets in one step each, once ``queue`` holds all of a packet: its length read, the packet
    decrypted, channel data handed on as a view of the plaintext. This is asyncssh's header step
    (``_recv_pkthdr``) and :func:`recv_packet` together. A packet lying whole in the first chunk (about seven
    in eight of the channel data packets OpenSSH sends, eight 32 KiB packets to a 256 KiB socket read) is
    decrypted from a view of it, without any copy; one spread over several chunks is joined once. The
    plaintext is a view of the connection's arena (``asyncssh_ciphers.Arenas``), not a new ``bytes``. It goes
    on with the next packet while the packets are channel data for a view-taking session (the connection's
    own checks made once for them, and the sequence number advanced as ``_finish_recv_packet`` does).

    Returns whether it took a packet, None if the next packet is not all there yet (nothing more taken: call
    again when more arrived). It takes none (False) unless the parser waits for a packet's header with
    nothing in ``_inpbuf``, the cipher is one of the gateway's (``packet_length``, ``decrypt_whole``), and the
    packet's length is one asyncssh's header step accepts. A packet that is not channel data for a session
    taking views (or whose tag is wrong) goes to asyncssh's ``_recv_packet`` with the state the header step
    leaves (the first block in ``_packet``, the rest of the packet in ``_inpbuf``), and ends the call."""
    cipher = self._recv_encryption
    packet_length = getattr(cipher, "packet_length", None)
    if (
        packet_length is None
        or self._inpbuf
        or getattr(self._recv_handler, "__func__", None) is not _ASYNCSSH_RECV_PKTHDR
    ):
        return False
    blocksize = self._recv_blocksize
    macsize = self._recv_macsize
    takes_data = _takes_data(self)
    channels = self._channels
    # _finish_recv_packet for channel data once logged in only advances the sequence number
    finish_here = bool(self._auth_final and self._transport)
    took = False
    while queue.size >= blocksize:
        chunk, start = queue.front()
        seq = self._recv_seq
        view = memoryview(chunk)
        pktlen = packet_length(seq, view[start : start + 4] if len(chunk) - start >= 4 else queue.peek(4))
        if pktlen > self._max_recv_pktlen or 4 + pktlen < blocksize:
            return took  # refused (or failed) by asyncssh's own steps
        total = 4 + pktlen + macsize
        end = start + total
        if end <= len(chunk):
            queue.advance(total)
        elif queue.size < total:
            return None
        else:
            view, start, end = memoryview(queue.take(total)), 0, total  # spread over chunks: joined once
        packet = cipher.decrypt_whole(seq, view[start:end], macsize)  # a view of the connection's arena
        prefix = b"" if packet is None else bytes(packet[:_HEAD])
        channel = None if packet is None or not takes_data else _open_channel(channels, prefix, len(packet))
        if channel is None:
            self._packet = bytes(view[start : start + blocksize])
            self._pktlen = pktlen
            self._inpbuf = bytes(view[start + blocksize : end])
            self._recv_handler = self._recv_packet
            _asyncssh_with(self, cipher, None if packet is None else bytes(packet))  # asyncssh parses bytes
            return True
        deliver(self, channel, packet[_HEAD : _HEAD + int.from_bytes(prefix[6:10], "big")])
        if finish_here:
            self._recv_seq = (seq + 1) & 0xFFFFFFFF
        else:
            self._finish_recv_packet(MSG_CHANNEL_DATA, seq)
            finish_here = bool(self._auth_final and self._transport)
        took = True
    return None


def send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
    """asyncssh's ``SSHConnection.send_packet``, without the ``SSH_MSG_IGNORE`` it sends first when the
    cipher is an AEAD cipher of the gateway (see above)."""
    state = self.__dict__
    if pkttype == MSG_IGNORE and state.get(_SKIP_IGNORE):
        state[_SKIP_IGNORE] = False  # the one asyncssh sends before the packet being sent
        return
    if pkttype <= MSG_KEX_LAST or getattr(self._send_encryption, "ignore_before_packets", True):
        _ASYNCSSH_SEND_PACKET(self, pkttype, *args, handler=handler)
        return
    state[_SKIP_IGNORE] = True
    try:
        _ASYNCSSH_SEND_PACKET(self, pkttype, *args, handler=handler)
    finally:
        state[_SKIP_IGNORE] = False


def install() -> None:
    """Make server connections receive packets through :func:`recv_packet` and send them through
    :func:`send_packet`; idempotent, process-wide."""
    cls: Any = SSHServerConnection
    cls._recv_packet = recv_packet
    cls.send_packet = send_packet
