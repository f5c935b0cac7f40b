"""The SFTP listener of a gateway node: SSH with strong algorithms only, account logins, live-session control.

Logins: a password (also through keyboard-interactive, as WinSCP and FileZilla ask) or, if the account has
authorized keys, a public key whose signature asyncssh verifies against exactly those keys (SHA-1 ``ssh-rsa``
signatures are refused). Every login goes through :class:`AccountService`: account active, case open. Any
exception while authenticating rejects the login. A failed password login is answered ``failure_delay``
seconds after it arrived (:class:`FailurePacer`), whatever its path took, and is scored
(:class:`LoginDefender`, per account and per address); a banned login is refused without checking
its password. Unknown and known
usernames get the same reply after the same work, at the same moment.

Live sessions: each logged-in connection is a :class:`LiveSession`. Requests check it (account still active,
case still open); a revocation through :class:`AccountService` cuts the account's sessions at once; a
periodic check (``EFTGW_SFTP_SESSION_CHECK_INTERVAL``) cuts sessions whose account expired or was revoked by
another process, or whose case closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import asyncssh
from asyncssh.packet import SSHPacket

from eftgw.accounts import AccountService
from eftgw.audit import AuditLog
from eftgw.errors import Unauthenticated
from eftgw.gateway import Gateway
from eftgw.memory import SFTP_CHANNEL_PACKET, SFTP_WINDOW
from eftgw.model import Principal, Role, Via
from eftgw.proxy_protocol import ProxyProtocolListener, parse_networks
from eftgw.sftp.asyncssh_ciphers import install_packet_ciphers
from eftgw.sftp.asyncssh_compat import (
    SFTPOnlySession,
    install_quiet_packet_log,
    install_receive_buffer,
    require_tested_version,
    strict_kex_negotiated,
    wrap_signature_check,
)
from eftgw.sftp.defender import LoginDefender
from eftgw.sftp.flow import ReceiveMemory
from eftgw.sftp.fs import CaseSFTPServer, SftpContext
from eftgw.sftp.hostkeys import fingerprints, host_key_pairs, load_or_create_host_keys
from eftgw.sftp.limits import FileBudget, limit_accept_error_logs, listening_socket, node_budget
from eftgw.storage.budget import BufferBudget

log = logging.getLogger("eftgw.sftp")

KEX_ALGS = [
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp521",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp256",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group14-sha256",
]
ENCRYPTION_ALGS = [
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
]
MAC_ALGS = [
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "umac-128-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
    "umac-128@openssh.com",
]
SIGNATURE_ALGS = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
]
MAX_FAILURES_PER_CONNECTION = 6
CUT_MESSAGE = "The SFTP account has expired or was revoked, or the case was closed."


class FailurePacer:
    """Answers every failed password login ``delay`` seconds after the attempt arrived.

    The deadline is set when the attempt arrives, before the account lookup and the argon2id verification,
    and the reply waits for it: a wrong password for a real account, an unknown account name and a name that
    cannot be an account are answered at the same moment, however long each path's own work took (as long as
    that stays under the delay: tens of milliseconds against one second by default). A fixed sleep after the
    work, instead, would add the work's duration, and its noise, to the reply time.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def deadline(self) -> float:
        """When a failure of an attempt arriving now is answered (``time.monotonic`` seconds)."""
        return time.monotonic() + self.delay

    async def wait(self, deadline: float) -> None:
        """Wait until ``deadline`` (at once if it has passed)."""
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))


class LiveSession:
    """A logged-in SFTP connection; the session guard every request of it checks."""

    def __init__(
        self, principal: Principal, conn: asyncssh.SSHServerConnection, service: SftpService
    ) -> None:
        self.principal = principal
        self.conn = conn
        self.service = service
        self.cut_reason: str | None = None

    @property
    def username(self) -> str:
        return self.principal.user

    async def authorize(self) -> None:
        if self.cut_reason is None and not await self.service.accounts.check_session(self.username):
            await self.service.cut(self, CUT_MESSAGE)
        if self.cut_reason is not None:
            raise Unauthenticated(self.cut_reason)

    def disconnect(self, reason: str) -> None:
        if self.cut_reason is None:
            self.cut_reason = reason
        self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, reason)


class SftpService:
    """Runs the SFTP listener for a :class:`Gateway`; ``start`` and ``stop`` it next to the HTTP site."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        host: str | None = None,
        port: int | None = None,
        context: SftpContext | None = None,
        defender: LoginDefender | None = None,
        failure_delay: float = 1.0,
        check_interval: float | None = None,
        window: int = SFTP_WINDOW,
        max_packet: int = SFTP_CHANNEL_PACKET,
        keepalive_interval: float = 30.0,
    ) -> None:
        settings = gateway.settings
        self.gateway = gateway
        self.accounts: AccountService = gateway.accounts
        self.audit: AuditLog = gateway.audit
        self.host = host if host is not None else settings.host
        self.port = port if port is not None else settings.sftp_port
        self.context = context or SftpContext(
            gateway.uploads,
            gateway.files,
            gateway.cases,
            budget=FileBudget(
                per_session=settings.sftp_max_handles_per_session,
                per_account=settings.sftp_max_handles_per_account,
                node=node_budget(settings.sftp_reserved_fds),
            ),
            write_memory=BufferBudget(settings.sftp_write_memory),
        )
        self.defender = defender or LoginDefender(gateway.clock, allowlist=settings.sftp_defender_allowlist)
        self.pacer = FailurePacer(failure_delay)
        self.check_interval = check_interval or settings.sftp_session_check_interval
        self.window = window
        self.max_packet = max_packet
        self.keepalive_interval = keepalive_interval
        # A connection holds at most one window before it stops reading; all together at most the setting.
        self.receive_memory = ReceiveMemory(settings.sftp_receive_memory, per_connection=window)
        self.host_keys_dir = settings.sftp_host_keys_dir or settings.resolved_data_dir / "ssh"
        self.sessions: set[LiveSession] = set()
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._listener: asyncssh.SSHAcceptor | ProxyProtocolListener | None = None
        self._checker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def bound_port(self) -> int:
        """The port listened on (useful when started with port 0)."""
        if self._listener is None:
            raise RuntimeError("the SFTP listener is not running")
        return int(self._listener.get_port())

    async def start(self) -> None:
        require_tested_version()
        install_receive_buffer()
        install_packet_ciphers()
        install_quiet_packet_log()
        keys = await asyncio.to_thread(load_or_create_host_keys, self.host_keys_dir)
        await self.accounts.prepare()
        self.accounts.on_revoke(self._revoked)
        limit_accept_error_logs()
        options: dict[str, Any] = dict(
            server_host_keys=host_key_pairs(keys, SIGNATURE_ALGS),
            server_version="eftgw",
            kex_algs=KEX_ALGS,
            encryption_algs=ENCRYPTION_ALGS,
            mac_algs=MAC_ALGS,
            compression_algs=["none"],
            signature_algs=SIGNATURE_ALGS,
            x509_trusted_certs=None,
            allow_pty=False,
            # no line editor wrapped around the channel and the session: it would only pass SFTP bytes on,
            # through two more calls for each packet received and each reply written
            line_editor=False,
            agent_forwarding=False,
            x11_forwarding=False,
            login_timeout=60,
            keepalive_interval=self.keepalive_interval,
            keepalive_count_max=3,
            window=self.window,
            max_pktsize=self.max_packet,
        )
        self._listener = await self._listen(options)
        self._checker = asyncio.create_task(self._check_periodically(), name="sftp-session-check")
        log.info(
            "SFTP listening on %s:%d; host keys %s; at most %d descriptors (connections and open files)",
            self.host,
            self.bound_port,
            ", ".join(fingerprints(keys)),
            self.context.budget.node,
        )

    async def _listen(self, options: dict[str, Any]) -> asyncssh.SSHAcceptor | ProxyProtocolListener:
        """The SSH listener: plain TCP, or admitting connections through PROXY protocol v2; either way each
        connection's ``peername`` is its client's address (what the defender, audit and logs use)."""
        settings = self.gateway.settings
        backlog = 256
        # Accepted connections count against the node's descriptor budget; each is given back when its
        # SSH connection ends (_AccountSSHServer.connection_lost) or, refused by the PROXY rules, at once.
        sock = listening_socket(self.host, self.port, backlog, self.context.budget)
        if settings.proxy_protocol != "on":
            return await asyncssh.create_server(
                lambda: _AccountSSHServer(self), sock=sock, backlog=backlog, **options
            )
        prepared = await asyncssh.SSHServerConnectionOptions.construct(
            server_factory=lambda: _AccountSSHServer(self), **options
        )

        async def handoff(sock: socket.socket) -> None:
            # asyncssh's public API for an accepted socket; it returns once the client has logged in.
            await asyncssh.run_server(sock, options=prepared)

        return ProxyProtocolListener.on_socket(
            sock,
            handoff,
            parse_networks(settings.trusted_proxies),
            name="sftp",
            client_speaks_first=False,
            log_connections=True,
            on_refused=self.context.budget.disconnect,
        )

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
        for session in list(self.sessions):
            session.disconnect("The gateway is shutting down.")
        for conn in list(self.connections):
            conn.close()
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 10)
        # Handles closed by the teardown make what they hold durable before the core shuts down.
        try:
            async with asyncio.timeout(30):
                await self.context.writers.drained()
        except TimeoutError:
            log.warning("%d SFTP writers still busy at shutdown", len(self.context.writers))
        if self._background:
            await asyncio.wait(self._background, timeout=30)

    # live sessions -------------------------------------------------------------------------------

    async def check_sessions(self) -> int:
        """Cut every session whose account or case no longer allows it; return how many were cut."""
        cut = 0
        for username in {s.username for s in self.sessions if s.cut_reason is None}:
            if not await self.accounts.check_session(username):
                for session in [s for s in self.sessions if s.username == username]:
                    await self.cut(session, CUT_MESSAGE)
                    cut += 1
        return cut

    async def cut(self, session: LiveSession, reason: str) -> None:
        if session.cut_reason is not None:
            return
        session.disconnect(reason)
        principal = session.principal
        await self.audit.record("sftp.session.cut", principal, principal.case_id, reason=reason)

    def _revoked(self, username: str) -> None:
        for session in [s for s in self.sessions if s.username == username]:
            session.disconnect("The SFTP account was revoked.")

    async def _check_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.check_sessions()
            except Exception:
                log.exception("checking live SFTP sessions failed; retrying")

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _AccountSSHServer(asyncssh.SSHServer):
    """One SSH connection: authenticates an account, then offers the SFTP subsystem only."""

    def __init__(self, service: SftpService) -> None:
        self.service = service
        self.conn: asyncssh.SSHServerConnection | None = None
        self.remote = "unknown"
        self.failures = 0
        self.session: LiveSession | None = None
        self.counted = True  # the listening socket counted it against the budget (limits.listening_socket)

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.service.connections.add(conn)
        peer = conn.get_extra_info("peername")  # the client's address, also behind a PROXY protocol balancer
        self.remote = str(peer[0]) if peer else "unknown"
        if self.service.defender.closes(self.remote):
            log.warning("SFTP connection from banned address %s closed", self.remote)
            conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many failed logins.")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            self.counted = False
            self.service.context.budget.disconnect()
        if self.conn is not None:
            self.service.connections.discard(self.conn)
        if self.session is not None:
            self.service.sessions.discard(self.session)

    def begin_auth(self, username: str) -> bool:
        if self.conn is not None and not terrapin_safe(self.conn):
            log.warning("SFTP client at %s refused: no strict KEX and a Terrapin-prone cipher", self.remote)
            self.conn.disconnect(
                asyncssh.DISC_KEY_EXCHANGE_FAILED,
                "Your SFTP client supports neither strict key exchange nor AES-GCM; please update it.",
            )
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        deadline = self.service.pacer.deadline()
        if self.service.defender.refuses(self.remote, username):
            await self._refused(username, deadline)
            return False
        try:
            principal = await self.service.accounts.login_password(username, password, self.remote)
        except Unauthenticated:
            await self._failed(username, deadline)
            return False
        except Exception:
            log.exception("SFTP password login of %r failed with an error; rejected", username[:64])
            await self._failed(username, deadline)
            return False
        self._admitted(principal, method=None)
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Accept a key authorized for the account; the login happens only once asyncssh has verified the
        signature with it (see :func:`_admit_on_signature`)."""
        if self.service.defender.refuses(self.remote, username):
            return False
        try:
            offered = key.public_data
            for line in await self.service.accounts.authorized_keys(username):
                if asyncssh.import_public_key(line).public_data == offered:
                    principal = await self.service.accounts.key_principal(username, line, self.remote)
                    _admit_on_signature(key, functools.partial(self._admitted, principal, method="publickey"))
                    return True
        except Unauthenticated:
            return False
        except Exception:
            log.exception("SFTP public-key check of %r failed with an error; rejected", username[:64])
        return False

    def session_requested(self) -> SFTPOnlySession | bool:
        session = self.session
        if session is None or session.cut_reason is not None:
            return False
        context = self.service.context
        factory: Callable[[Any], CaseSFTPServer] = lambda chan: CaseSFTPServer(chan, context, session)  # noqa: E731
        return SFTPOnlySession(factory, self.service.receive_memory)

    def _admitted(self, principal: Principal, *, method: str | None) -> None:
        if self.conn is None or self.session is not None:
            return
        self.session = LiveSession(principal, self.conn, self.service)
        self.service.sessions.add(self.session)
        self.service.defender.record_success(self.remote, principal.user)
        if method is not None:
            self.service.spawn(self.service.accounts.record_login(principal, method=method))

    async def _failed(self, username: str, deadline: float) -> None:
        self.failures += 1
        banned = self.service.defender.record_failure(self.remote, username)
        self.service.spawn(self._audit_failure(username))
        await self.service.pacer.wait(deadline)
        if self.conn is not None and (banned or self.failures >= MAX_FAILURES_PER_CONNECTION):
            note = " (banned)" if banned else ""
            log.warning("SFTP logins from %s: too many failures%s", self.remote, note)
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many failed logins.")

    async def _refused(self, username: str, deadline: float) -> None:
        """A login the defender refuses (banned pair, address or account): answered like any failure, its
        credentials unchecked, then the connection is closed."""
        await self.service.pacer.wait(deadline)
        if self.conn is not None:
            log.warning("SFTP login to %r from %s refused: banned", username[:64], self.remote)
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many failed logins.")

    async def _audit_failure(self, username: str) -> None:
        actor = Principal(username[:64] or "-", Role.CUSTOMER, via=Via.SFTP, remote=self.remote)
        with contextlib.suppress(Exception):
            await self.service.audit.record("sftp.login_failed", actor, None)


def terrapin_safe(conn: asyncssh.SSHServerConnection) -> bool:
    """Whether the connection is safe from prefix truncation (Terrapin, CVE-2023-48795).

    Strict key exchange (``kex-strict-*-v00@openssh.com``) is offered to every client and makes any cipher
    safe. A client without it (rclone 1.60, for one) is accepted only with a cipher mode the attack cannot
    use: AES-GCM, or AES-CTR with a MAC that is not encrypt-then-MAC.
    """
    if strict_kex_negotiated(conn):
        return True
    for direction in ("send", "recv"):
        cipher = str(conn.get_extra_info(f"{direction}_cipher", ""))
        mac = str(conn.get_extra_info(f"{direction}_mac", ""))
        gcm = cipher.endswith("-gcm@openssh.com")
        ctr_plain_mac = cipher.endswith("-ctr") and not mac.endswith("-etm@openssh.com")
        if not (gcm or ctr_plain_mac):
            return False
    return True


def _admit_on_signature(key: asyncssh.SSHKey, admit: Callable[[], None]) -> None:
    """Wrap this key object's ``verify``: only signatures made with an allowed algorithm count (no SHA-1
    ``ssh-rsa``), and a good one admits the login before asyncssh tells the client it succeeded.

    asyncssh verifies the login signature with the very key object :meth:`validate_public_key` approved,
    whatever signature algorithm the client chose, then reports success; wrapping that object is the one
    place where both the algorithm and the outcome are known.
    """
    allowed = {alg.encode() for alg in SIGNATURE_ALGS}

    def check_and_admit(data: bytes, sig: bytes, verify: Callable[[bytes, bytes], bool]) -> bool:
        try:
            algorithm = SSHPacket(sig).get_string()
        except Exception:
            return False
        if algorithm not in allowed or not verify(data, sig):
            return False
        admit()
        return True

    wrap_signature_check(key, check_and_admit)
