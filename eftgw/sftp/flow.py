"""Node-wide backpressure on the bytes SFTP clients sent that the gateway has not processed yet.

An SSH channel's window lets a client send that many bytes ahead of what the server consumed. asyncssh
keeps them in the session's receive buffer (and, once the session pauses its channel, in the channel's own
buffer as well), so a node that falls behind holds up to two windows per session: measured with 50 OpenSSH
``put`` sessions waiting for room in the write buffer (``EFTGW_SFTP_WRITE_MEMORY``), 450 MiB. The window is
per session, so no window size bounds the node.

:class:`ReceiveMemory` bounds them for the node instead: every SFTP session reports the bytes in its receive
buffer (:class:`~eftgw.sftp.asyncssh_compat.SFTPOnlySession`), and a connection stops *reading its socket*
when it holds ``per_connection`` bytes or when all connections together hold more than ``limit``
(``EFTGW_SFTP_RECEIVE_MEMORY``). What the client sends then waits in the kernel's socket buffers and TCP
slows the client down, as for an HTTP body the gateway does not read. Paused connections resume reading as
soon as the node holds three quarters of ``limit`` or less again (and they themselves half of
``per_connection`` or less).

A connection may take in what it has already read from the socket after it is paused (one socket read,
256 KiB, ``asyncssh_compat.SOCKET_READ``, and the rest of a packet begun in it, at most 256 KiB), so the node
holds at most ``limit`` plus about 512 KiB per connection. Sessions' channels are never paused: the window
keeps only its role of letting a client send ahead, and the throughput of one session is what it was with
asyncssh's own buffering.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("eftgw.sftp.flow")


class Readable(Protocol):
    """What :class:`ReceiveMemory` pauses: a connection's transport (``asyncio.ReadTransport``)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool: ...


class ReceiveMemory:
    """The bytes all SFTP sessions of the node received and have not processed, bounded by pausing reads."""

    def __init__(self, limit: int, per_connection: int) -> None:
        if limit <= 0 or per_connection <= 0:
            raise ValueError("the SFTP receive memory and its share per connection must be positive")
        self.limit = limit
        self.per_connection = min(per_connection, limit)
        self.held = 0
        self.peak = 0
        self.pauses = 0  # how many times a connection was paused (for tests and the curious)
        # Reading resumes only once a quarter of the node's bytes and half of the connection's are processed:
        # pausing and resuming a socket are system calls, not to be made for every packet.
        self._node_resume = limit - limit // 4
        self._connection_resume = self.per_connection // 2
        self._held: dict[Readable, int] = {}
        self._paused: set[Readable] = set()

    @property
    def paused(self) -> int:
        """How many connections are not reading their socket now."""
        return len(self._paused)

    def is_paused(self, transport: Readable) -> bool:
        """Whether ``transport`` is not reading its socket now."""
        return transport in self._paused

    def held_by(self, transport: Readable) -> int:
        return self._held.get(transport, 0)

    def change(self, transport: Readable, delta: int) -> None:
        """A session of ``transport`` has ``delta`` bytes more (or fewer) in its receive buffer."""
        if not delta:
            return
        held = self._held.get(transport, 0) + delta
        if held > 0:
            self._held[transport] = held
        else:
            self._held.pop(transport, None)
        self.held += delta
        if delta > 0:
            self.peak = max(self.peak, self.held)
            if transport not in self._paused and (self.held > self.limit or held >= self.per_connection):
                self._paused.add(transport)
                self.pauses += 1
                transport.pause_reading()
        elif self._paused and self.held <= self._node_resume:
            self._resume()

    def _resume(self) -> None:
        for transport in list(self._paused):
            if transport.is_closing():
                self._paused.discard(transport)
            elif self._held.get(transport, 0) <= self._connection_resume:
                self._paused.discard(transport)
                transport.resume_reading()

    def forget(self, transport: Readable) -> None:
        """``transport`` is closed: drop what is recorded of it (a session gives back its bytes first)."""
        self._paused.discard(transport)
        rest = self._held.pop(transport, 0)
        if rest:
            self.held -= rest
            if self._paused and self.held <= self._node_resume:
                self._resume()
