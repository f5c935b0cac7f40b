"""How many file descriptors the SFTP side may hold: per session, per account, and for the whole node.

Every SFTP connection and every open file handle holds a file descriptor of the gateway process (the
connection's socket; a file of the filesystem store being read, or the socket to S3 it streams from; a part
being written). Without limits one session opening the same file a thousand times exhausts the process's
``RLIMIT_NOFILE``, and then the HTTPS API, ``/healthz`` and every other customer fail with it. So:

- a session holds at most ``per_session`` open handles, for reading and writing together
  (``EFTGW_SFTP_MAX_HANDLES_PER_SESSION``), and the sessions of one account at most ``per_account``
  (``EFTGW_SFTP_MAX_HANDLES_PER_ACCOUNT``);
- the whole SFTP side (connections plus open handles) stays within a node budget,
  ``max(RLIMIT_NOFILE - EFTGW_SFTP_RESERVED_FDS, RLIMIT_NOFILE // 4)`` (soft limit, read at start), which
  leaves the reserved descriptors to HTTPS, the database, storage and logs.

An open past a limit gets ``SSH_FX_FAILURE`` with a message saying which limit; a connection past the node
budget is closed as it is accepted, with a line saying the gateway is busy. Each session logs the first
limit it hits, refusals of connections are logged once a minute, so the log stays bounded whatever a client
does.

If the process runs out of descriptors all the same (other work used them), the accept loops must neither
spin nor flood the log. asyncio's (``selector_events._accept_connection``, Python 3.11) logs an
``EMFILE`` from ``accept()`` through the loop's exception handler, pauses the listener for a second, and then
goes on calling ``accept()`` up to ``backlog`` times in the same pass: each call logs again and schedules one
more restart, so the restarts multiply (hundreds of thousands of log lines in half a minute).
:func:`listening_socket` makes the SFTP listener's socket one whose ``accept()`` reports the first failure of
a pass and answers "nothing to accept" for the rest of the pause: one restart, a real one-second back-off.
The same socket counts the connections it accepts against the budget.
:func:`limit_accept_error_logs` lets through at most one such report per ``ACCEPT_LOG_INTERVAL`` seconds
(HTTPS's listener included) with the count of those held back.
"""

from __future__ import annotations

import collections
import errno
import logging
import resource
import socket
import time

from asyncssh import SFTPFailure

log = logging.getLogger("eftgw.sftp")

OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_PAUSE = 0.5  # less than asyncio's ACCEPT_RETRY_DELAY (1 s): the retry after the pause really accepts
ACCEPT_LOG_INTERVAL = 10.0
ACCEPT_ERROR = "socket.accept() out of system resource"
BUSY_LINE = b"The gateway is busy; try again later.\r\n"


def node_budget(reserved: int, soft_limit: int | None = None) -> int:
    """The descriptors the SFTP side may hold: ``max(limit - reserved, limit // 4)`` of the soft limit."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY or soft_limit <= 0:
        soft_limit = 1 << 20
    return max(soft_limit - reserved, soft_limit // 4)


class FileBudget:
    """The open handles and connections of the SFTP side of one node, against their limits."""

    def __init__(self, *, per_session: int, per_account: int, node: int) -> None:
        self.per_session = per_session
        self.per_account = per_account
        self.node = node
        self.in_use = 0  # connections + open handles
        self.refused = 0  # connections refused
        self._refusal_logged_at = -60.0
        self._accounts: collections.Counter[str] = collections.Counter()

    def connect(self) -> bool:
        """Count a new connection; ``False`` (nothing counted, refusal logged once a minute) if the node
        budget is spent."""
        if self.in_use >= self.node:
            self.refused += 1
            now = time.monotonic()
            if now >= self._refusal_logged_at + 60:
                self._refusal_logged_at = now
                log.warning(
                    "SFTP connections refused: the node's budget of %d descriptors is spent "
                    "(%d refused so far)",
                    self.node,
                    self.refused,
                )
            return False
        self.in_use += 1
        return True

    def disconnect(self) -> None:
        self.in_use -= 1

    def session(self, account: str) -> SessionFiles:
        """The handle count of a new session of ``account``."""
        return SessionFiles(self, account)

    def account_handles(self, account: str) -> int:
        return self._accounts[account]


class SessionFiles:
    """The open handles of one SFTP session, counted against the session's, the account's and the node's
    limits. :meth:`opening` before a handle is made, :meth:`closed` when it is closed (or was not made)."""

    def __init__(self, budget: FileBudget, account: str) -> None:
        self.budget = budget
        self.account = account
        self.open = 0
        self._warned = False

    def opening(self) -> None:
        """Count one more handle, or raise :class:`SFTPFailure` saying which limit it would exceed."""
        budget = self.budget
        if self.open >= budget.per_session:
            self._refuse(
                f"Too many open files in this session (at most {budget.per_session}); "
                f"close some before opening more."
            )
        if budget.account_handles(self.account) >= budget.per_account:
            self._refuse(
                f"Too many open files for this account across its sessions (at most {budget.per_account}); "
                f"close some before opening more."
            )
        if budget.in_use >= budget.node:
            self._refuse("The gateway has too many files open right now; close some and try again later.")
        self.open += 1
        budget.in_use += 1
        budget._accounts[self.account] += 1

    def closed(self) -> None:
        """One handle fewer."""
        if self.open <= 0:
            return
        self.open -= 1
        budget = self.budget
        budget.in_use -= 1
        budget._accounts[self.account] -= 1
        if budget._accounts[self.account] <= 0:
            del budget._accounts[self.account]

    def close_all(self) -> None:
        """The session ended: whatever it still counts is released."""
        while self.open:
            self.closed()

    def _refuse(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("SFTP session of %s refused an open: %s", self.account, message)
        raise SFTPFailure(message)


class _GuardedListener(socket.socket):
    """A listening socket that counts the connections it accepts against a :class:`FileBudget`, turns away
    those past it, and backs off once per pause when the process is out of descriptors.

    Connections past the budget are closed right here, inside ``accept()``, before asyncio or asyncssh make
    anything of them: asyncio accepts up to ``backlog`` connections in one pass and the transports of those
    refused later would all hold their descriptors at once. The client gets one line saying why (RFC 4253
    lets a server send lines before its version) and the connection closes.

    The first ``EMFILE`` (or ``ENFILE``, ``ENOBUFS``, ``ENOMEM``) goes to asyncio, which logs it and restarts
    accepting a second later; calls during the next ``ACCEPT_PAUSE`` seconds raise :class:`BlockingIOError`,
    which asyncio takes as an empty queue and ends the pass on, without another log line or restart.
    """

    budget: FileBudget | None = None
    _quiet_until = 0.0

    def accept(self) -> tuple[socket.socket, object]:
        for _ in range(64):  # a bounded number turned away per call; asyncio calls again
            conn, address = self._accept_once()
            if self.budget is None or self.budget.connect():
                return conn, address
            _turn_away(conn)
        raise BlockingIOError(errno.EAGAIN, "turned away connections past the budget")

    def _accept_once(self) -> tuple[socket.socket, object]:
        now = time.monotonic()
        if now < self._quiet_until:
            raise BlockingIOError(errno.EAGAIN, "accepting paused: out of file descriptors")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno in OUT_OF_RESOURCES:
                self._quiet_until = now + ACCEPT_PAUSE
            raise


def _turn_away(conn: socket.socket) -> None:
    try:
        conn.setblocking(False)
        conn.send(BUSY_LINE)
    except OSError:
        pass
    finally:
        conn.close()


def listening_socket(host: str, port: int, backlog: int, budget: FileBudget | None = None) -> socket.socket:
    """A bound, listening TCP socket for ``host:port`` (its first address) whose accepted connections are
    counted against ``budget`` (:class:`_GuardedListener`); each must be given back with
    :meth:`FileBudget.disconnect` when it ends."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = _GuardedListener(family, kind, proto)
    sock.budget = budget
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _AcceptErrorLogLimit(logging.Filter):
    """Lets through one "out of system resource" record of asyncio per interval, with the count held back."""

    def __init__(self, interval: float) -> None:
        super().__init__("asyncio")
        self.interval = interval
        self._next = 0.0
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(ACCEPT_ERROR):
            return True
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return False
        self._next = now + self.interval
        if self._held:
            record.msg = f"{record.msg}\n({self._held} more since the last report, not logged)"
            record.args = None
            self._held = 0
        return True


def limit_accept_error_logs(interval: float = ACCEPT_LOG_INTERVAL) -> None:
    """Bound the accept loops' "out of system resource" log lines (once per process)."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _AcceptErrorLogLimit) for f in logger.filters):
        logger.addFilter(_AcceptErrorLogLimit(interval))
