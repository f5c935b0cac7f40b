"""How the gateway's SFTP request loop takes requests from its session's receive buffer: part of item 1 of
:mod:`eftgw.sftp.asyncssh_compat`, which documents the asyncssh internals used here (``SSHStreamSession``'s
``_recv_buf``, ``_recv_buf_len``, ``_read_locks``, ``_maybe_resume_reading``, ``_eof_received``,
``_read_paused``) and whose version check guards them.

asyncssh reads each SFTP request with two exact stream reads (its length, then the request), each taking the
stream's read lock and looping over the buffer, and joins the request's pieces (the channel packets' data)
into one ``bytes``; the gateway's write buffer then joined requests again into 1 MiB pieces for the store.
Here the request loop waits until a request is all in the buffer (:func:`waits_in_buffer`), takes its pieces
in one step (:func:`take_request`) and joins a write request's data on its own (:func:`request_packet`):
one copy of the data after decryption, a ``bytes`` that the write buffer hands the store as it is.
"""

from __future__ import annotations

from typing import Any

from asyncssh.constants import FXP_WRITE
from asyncssh.packet import SSHPacket
from asyncssh.sftp import MAX_SFTP_PACKET_LEN

MAX_REQUEST = 256 * 1024
"""The most data a read or write request may carry (``limits@openssh.com``, as OpenSSH's sftp-server)."""


class WriteRequest(SSHPacket):
    """A write request whose data was joined on its own: the packet holds the request up to the data (type,
    id, handle, offset, length), ``data`` the data, a ``bytes`` the write buffer hands the store as it is."""

    def __init__(self, head: bytes, data: bytes) -> None:
        super().__init__(head)
        self.data = data


_WRITE_HEAD = 21  # of a write request without its length: type, id, handle length, offset, data length
_LEAD = _WRITE_HEAD + 256  # a write request's head with the longest handle (asyncssh's are 4 bytes)


def request_packet(pieces: list[bytes | memoryview]) -> SSHPacket:
    """The request in ``pieces`` (from :func:`take_request`) as asyncssh's request loop reads it. A write
    request whose data ends the request is a :class:`WriteRequest`: its data is joined from the pieces
    directly (the one copy of these bytes on the event loop after decryption), so that the buffer can hand
    the store that ``bytes`` without joining it again into a larger piece. Any other request is joined
    whole."""
    first = pieces[0]
    lead = first[:_LEAD]
    if len(lead) < _LEAD:  # a head cut across pieces (rare), or a short request: its bytes joined
        for piece in pieces[1:]:
            lead = bytes(lead) + bytes(piece[: _LEAD - len(lead)])
            if len(lead) >= _LEAD:
                break
    if len(lead) >= _WRITE_HEAD and lead[0] == FXP_WRITE:
        head = _WRITE_HEAD + int.from_bytes(lead[5:9], "big")
        size = sum(len(piece) for piece in pieces)
        if len(lead) >= head and head + int.from_bytes(lead[head - 4 : head], "big") == size:
            rest = _after(pieces, head)
            data = rest[0] if len(rest) == 1 and type(rest[0]) is bytes else b"".join(rest)
            return WriteRequest(bytes(lead[:head]), data)
    return SSHPacket(first if len(pieces) == 1 and type(first) is bytes else b"".join(pieces))


def _after(pieces: list[bytes | memoryview], skip: int) -> list[bytes | memoryview]:
    """``pieces`` without their first ``skip`` bytes."""
    rest: list[bytes | memoryview] = []
    for piece in pieces:
        if skip >= len(piece):
            skip -= len(piece)
        elif skip:
            rest.append(memoryview(piece)[skip:])
            skip = 0
        else:
            rest.append(piece)
    return rest


def take_request(session: Any) -> list[bytes | memoryview] | None:
    """The pieces of the next SFTP request (its length taken off), if all of it is in ``session``'s receive
    buffer and nothing else is reading; else None, with nothing taken (then asyncssh's ``readexactly`` reads
    it, waiting or raising as it does). What asyncssh's ``SSHStreamSession.read`` does for two exact reads:
    the bytes taken from the front of ``_recv_buf[None]``, ``_recv_buf_len`` lowered, then
    ``_maybe_resume_reading``; the pieces are joined by :func:`request_packet`."""
    buf = session._recv_buf[None]
    held = session._recv_buf_len
    if held < 4 or session._read_locks[None].locked():
        return None
    first = buf[0]
    if isinstance(first, Exception) or len(first) < 4:
        return None  # an end of file or a signal first, or a length split across pieces: asyncssh's path
    length = int.from_bytes(first[:4], "big")
    total = 4 + length
    if length > MAX_SFTP_PACKET_LEN or held < total:
        return None
    count = 0
    left = total
    for piece in buf:
        if isinstance(piece, Exception):
            return None
        count += 1
        left -= len(piece)
        if left <= 0:
            break
    if left > 0:
        return None
    pieces: list[bytes | memoryview] = buf[:count]
    if left < 0:  # the request ends inside the last piece: its rest stays at the front
        last = pieces[-1]
        cut = len(last) + left
        pieces[-1] = last[:cut]
        del buf[: count - 1]
        buf[0] = last[cut:]
    else:
        del buf[:count]
    pieces[0] = pieces[0][4:]
    session._recv_buf_len = held - total
    session._maybe_resume_reading()
    return pieces


WAIT_IN_BUFFER = 4 + MAX_REQUEST + 1024
"""The longest request (with its length) that the request loop waits for in the session's receive buffer
until all of it is there (:func:`waits_in_buffer`): what ``limits@openssh.com`` allows a client to send."""


def waits_in_buffer(session: Any) -> bool:
    """Whether the request loop may wait for the next request to be all in ``session``'s receive buffer
    (then :func:`take_request` takes it, and a write request's data is joined once, from its packets),
    instead of reading it with asyncssh's exact reads, which take the pieces as they come and join them.
    Not when the session received an end of file, a read holds the lock, its buffer holds an exception or a
    length split across pieces, the request is longer than ``WAIT_IN_BUFFER``, or the connection is not
    reading (paused for the node's receive memory, or asyncssh paused the channel): bytes waited for in the
    buffer stay counted there, so a paused connection could wait for ever."""
    if session._eof_received or session._read_paused or session._read_locks[None].locked():
        return False
    paused = getattr(session, "reading_paused", None)
    if paused is not None and paused():
        return False
    buf = session._recv_buf[None]
    if not buf:
        return True
    first = buf[0]
    if isinstance(first, Exception) or len(first) < 4:
        return False
    if 4 + int.from_bytes(first[:4], "big") > WAIT_IN_BUFFER:
        return False
    return not any(isinstance(piece, Exception) for piece in buf)
