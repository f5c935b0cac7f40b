"""Support for the SFTP tests: a real gateway on a loopback port, real clients, and a proxy that drops.

The gateway (core services + :class:`SftpService`, SQLite and the filesystem store in a temporary data dir)
runs on its own event loop in a background thread, so that blocking clients (OpenSSH ``sftp``, lftp, rclone
as subprocesses; paramiko) can talk to it from the test. ``GatewayThread.call`` runs a coroutine on the
gateway's loop, for setting up cases and accounts and for reading back what the core recorded.

Ports come from the SFTP range 22000-22999 (22100 and up; the first free one is taken).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paramiko
import pytest
from argon2 import PasswordHasher

from eftgw.clock import SystemClock
from eftgw.config import Settings
from eftgw.gateway import Gateway
from eftgw.model import FileRecord, Principal, Role, Upload
from eftgw.sftp import SftpService
from eftgw.sftp.defender import LoginDefender
from eftgw.sftp.hostkeys import load_or_create_host_keys

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
OPERATOR = Principal(user="operator", role=Role.SERVICE, via="cli")
ENGINEER = Principal(user="eve-engineer", role=Role.ENGINEER, via="token")
PORTS = range(22100, 23000)
_port_lock = threading.Lock()
_next_port = [PORTS.start]


def free_port() -> int:
    """A free loopback port from the SFTP tests' range."""
    with _port_lock:
        for _ in range(len(PORTS)):
            port = _next_port[0]
            _next_port[0] = port + 1 if port + 1 < PORTS.stop else PORTS.start
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port in 22100-22999")


_backends: dict[Path, dict[str, str]] = {}


def backend_for(data_dir: Path) -> dict[str, str]:
    """The ``EFTGW_*`` settings of the test run's backend for this data dir (the same on every call).

    Embedded (SQLite + the data dir) unless ``EFTGW_TEST_BACKEND=s3pg``: then a fresh PostgreSQL database
    and S3 bucket per data dir, made by the suite's shared helpers (``tests/support.py``), so the SFTP tests
    prove that backend too.
    """
    if os.environ.get("EFTGW_TEST_BACKEND", "embedded") == "embedded":
        return {}
    if data_dir not in _backends:
        from tests.support import backend_env

        _backends[data_dir] = backend_env(data_dir.name)
    return _backends[data_dir]


def settings_for(data_dir: Path, **values: Any) -> Settings:
    """Settings for a gateway (or admin command) on ``data_dir`` with the test run's backend."""
    for key, value in backend_for(data_dir).items():
        values.setdefault(key.removeprefix("EFTGW_").lower(), value)
    return Settings(data_dir=data_dir, **values)


# argon2id at a small cost for the gateways here: the same algorithm and hash format, hashed and verified by
# the same code (the decoy hash for unknown users included, so every path still costs the same), in about a
# millisecond instead of 0.2 s (a quarter of the SFTP tests' time went to hashing and verifying passwords).
# Gateways run as processes (GatewayProcess, the region, the CLI) keep the production profile, RFC 9106's.
TEST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

_host_keys: dict[str, bytes] = {}


def seed_host_keys(data_dir: Path) -> None:
    """Give a new data dir this test run's host keys, as the gateway would have made them (``ssh/``, mode
    0700, private files 0600): made once per test run by the gateway's own ``load_or_create_host_keys``, since
    making an RSA-3072 key takes 0.1 to 0.5 s and the SFTP tests start a gateway each. The gateway then loads
    them as it loads kept keys after a restart. ``test_host_keys_are_made_once_and_kept`` starts its gateway
    with ``host_keys="made"`` instead, and so proves the making."""
    if not _host_keys:
        with tempfile.TemporaryDirectory() as made:
            load_or_create_host_keys(Path(made) / "ssh")
            _host_keys.update({p.name: p.read_bytes() for p in (Path(made) / "ssh").iterdir()})
    directory = data_dir / "ssh"
    directory.mkdir(parents=True, mode=0o700)
    for name, content in _host_keys.items():
        path = directory / name
        path.write_bytes(content)
        path.chmod(0o644 if name.endswith(".pub") else 0o600)


@dataclass
class Account:
    username: str
    password: str
    case_id: str


class GatewayThread:
    """A gateway node serving SFTP on a loopback port from a background thread."""

    def __init__(self, data_dir: Path, *, host_keys: str = "seeded", **options: Any) -> None:
        """``host_keys``: ``"seeded"`` (this test run's keys, see :func:`seed_host_keys`) for a new data dir,
        or ``"made"`` (the gateway makes its own at start)."""
        self.data_dir = data_dir
        if host_keys == "seeded" and not (data_dir / "ssh").exists():
            seed_host_keys(data_dir)
        self.port = free_port()
        self.options = options
        self.clock = SystemClock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.gateway: Gateway | None = None
        self.service: SftpService | None = None

    # lifecycle ------------------------------------------------------------------------------------

    def start(self) -> GatewayThread:
        self.thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        opts = dict(self.options)
        extra = opts.pop("settings", {})
        settings = settings_for(self.data_dir, sftp_port=self.port, host="127.0.0.1", **extra)
        self.gateway = Gateway.build(settings, clock=self.clock)
        self.gateway.accounts.hasher = TEST_HASHER
        await self.gateway.start()
        defender = opts.pop("defender", None)
        if "defender_options" in opts:  # else the service makes its own from the settings
            defender = LoginDefender(self.clock, **opts.pop("defender_options"))
        self.service = SftpService(
            self.gateway,
            port=self.port,
            defender=defender,
            failure_delay=opts.pop("failure_delay", 0.3),
            check_interval=opts.pop("check_interval", 0.5),
            **opts,
        )
        await self.service.start()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        if self.service is not None:
            self.call(self.service.stop())
        # Tasks still running (a session's handler ending, a flush) are cancelled and awaited first: one
        # that held a database connection then gives it back to a live pool, which the gateway's close
        # disposes. The other way round, the connection was orphaned and the garbage collector found it
        # later, failing an unrelated test (aiosqlite's "connection deleted before being closed").
        self.call(_drain_loop())
        if self.gateway is not None:
            self.call(self.gateway.close())
        self.call(_drain_loop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()

    def call(self, coro: Awaitable[T], timeout: float = 120) -> T:
        """Run a coroutine on the gateway's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(_awaited(coro), self.loop).result(timeout)

    # set-up and inspection ------------------------------------------------------------------------

    @property
    def gw(self) -> Gateway:
        if self.gateway is None:
            raise RuntimeError("not started")
        return self.gateway

    @property
    def sftp(self) -> SftpService:
        if self.service is None:
            raise RuntimeError("not started")
        return self.service

    def open_case(self, case_id: str = "CASE-1") -> str:
        self.call(self.gw.cases.open(OPERATOR, case_id))
        return case_id

    def account(self, case_id: str = "CASE-1", keys: list[str] | None = None) -> Account:
        if self.call(self.gw.repo.get_case(case_id)) is None:
            self.open_case(case_id)
        issued = self.call(self.gw.accounts.create(OPERATOR, case_id, authorized_keys=keys))
        return Account(issued.account.username, issued.password, case_id)

    def files(self, case_id: str = "CASE-1") -> list[FileRecord]:
        return self.call(self.gw.files.list(OPERATOR_ENGINEER, case_id))

    def file_named(self, name: str, case_id: str = "CASE-1") -> FileRecord:
        matches = [f for f in self.files(case_id) if f.name == name]
        assert matches, f"no file {name!r} in {[f.name for f in self.files(case_id)]}"
        return matches[-1]

    def active_uploads(self, case_id: str = "CASE-1") -> list[Upload]:
        return self.call(self.gw.uploads.list_active(OPERATOR_ENGINEER, case_id))

    def content(self, record: FileRecord) -> bytes:
        async def read() -> bytes:
            download = await self.gw.files.open(OPERATOR_ENGINEER, record.case_id, record.id)
            return b"".join([chunk async for chunk in download.stream])

        return self.call(read())

    def place_engineer_file(self, name: str, data: bytes, case_id: str = "CASE-1") -> FileRecord:
        """An engineer puts a file into the case for the customer (as the HTTP path would)."""

        async def body() -> Any:
            yield data

        async def place() -> FileRecord:
            uploads = self.gw.uploads
            upload = await uploads.create(ENGINEER, case_id, length=len(data), metadata={"filename": name})
            if data:
                await uploads.append(ENGINEER, case_id, upload.id, 0, body())
            record = await self.gw.repo.get_file(case_id, upload.file_id)
            assert record is not None
            return record

        return self.call(place())

    def known_hosts(self, directory: Path, port: int | None = None) -> Path:
        """A known_hosts file pinning this gateway's host keys (clients check them strictly), for a
        connection to ``port`` (the gateway's own, or a proxy's in front of it)."""
        port = port or self.port
        lines = []
        for pub in sorted((self.data_dir / "ssh").glob("*.pub")):
            kind, blob = pub.read_text().split()[:2]
            lines.append(f"[127.0.0.1]:{port} {kind} {blob}")
        path = directory / f"known_hosts_{port}"
        path.write_text("\n".join(lines) + "\n")
        return path


OPERATOR_ENGINEER = Principal(user="operator", role=Role.ENGINEER, via="cli")


async def _awaited(coro: Awaitable[T]) -> T:
    return await coro


async def _drain_loop() -> None:
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=10)
    await asyncio.get_running_loop().shutdown_asyncgens()


# clients ------------------------------------------------------------------------------------------


@dataclass
class ClientKey:
    private: Path
    public_line: str


def openssh_sftp(
    gateway: GatewayThread,
    account: Account,
    batch: str,
    *,
    cwd: Path,
    key: ClientKey | None = None,
    port: int | None = None,
    timeout: float = 120,
    extra: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH ``sftp -b`` with a batch of commands; password logins answer through SSH_ASKPASS."""
    batch_file = cwd / f"batch-{time.monotonic_ns()}"
    batch_file.write_text(batch)
    args = [
        "sftp",
        "-o", "BatchMode=no",
        "-o", f"UserKnownHostsFile={gateway.known_hosts(cwd, port)}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "LogLevel=ERROR",
        "-o", "ConnectTimeout=20",
        "-P", str(port or gateway.port),
    ]  # fmt: skip
    env = dict(os.environ)
    if key is not None:
        args += [
            "-i",
            str(key.private),
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "IdentitiesOnly=yes",
        ]
    else:
        askpass = cwd / "askpass.sh"
        askpass.write_text(f"#!/bin/sh\nprintf '%s\\n' '{account.password}'\n")
        askpass.chmod(0o700)
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY="none")
        args += [
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "NumberOfPasswordPrompts=1",
        ]
    args += [*(extra or []), "-b", str(batch_file), f"{account.username}@127.0.0.1"]
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


@contextlib.contextmanager
def paramiko_sftp(
    port: int, account: Account, *, sock: socket.socket | None = None
) -> Iterator[tuple[paramiko.Transport, paramiko.SFTPClient]]:
    """A paramiko SFTP session logged in with the account's password."""
    transport = paramiko.Transport(sock or ("127.0.0.1", port))
    transport.banner_timeout = 30
    transport.auth_timeout = 30
    try:
        transport.connect(username=account.username, password=account.password)
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        client.get_channel().settimeout(60)
        yield transport, client
    finally:
        transport.close()


def login_fails(port: int, username: str, password: str, source: str = "127.0.0.1") -> float:
    """Try a password login from ``source``; it must be refused (at any stage). Return how long the
    password attempt took to be refused (0 if the connection was refused before that)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    transport = paramiko.Transport(sock)
    try:
        try:
            transport.start_client(timeout=30)
        except (paramiko.SSHException, EOFError, OSError):
            return 0.0
        started = time.monotonic()
        with pytest.raises((paramiko.AuthenticationException, paramiko.SSHException, EOFError, OSError)):
            transport.auth_password(username, password)
        return time.monotonic() - started
    finally:
        transport.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(condition: Callable[[], bool], timeout: float = 30, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


# a TCP proxy that can drop the connection ----------------------------------------------------------


class DroppingProxy:
    """Forwards loopback TCP connections to the gateway; can reset them like a failed network would.

    After ``drop_after`` bytes from client to server (or on :meth:`drop`), every connection through the
    proxy is reset (SO_LINGER 0: an RST, no FIN), so neither peer gets a clean shutdown; so is every later
    connection. Each connection is relayed by one thread that alone owns its two sockets, so that closing
    them really resets them.
    """

    def __init__(self, target_port: int, drop_after: int | None = None) -> None:
        self.target_port = target_port
        self.drop_after = drop_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.upstream_bytes = 0
        self.dropped = threading.Event()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._relay, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _relay(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
        except OSError:
            _reset(client)
            return
        peers = {client: server, server: client}
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(server, selectors.EVENT_READ)
            while not (self.dropped.is_set() or self._closed.is_set()):
                for key, _ in selector.select(0.05):
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    try:
                        data = source.recv(65536)
                    except OSError:
                        data = b""
                    if not data:  # one side ended: end the other too (gracefully)
                        for sock in (client, server):
                            with contextlib.suppress(OSError):
                                sock.close()
                        return
                    if source is client and self.drop_after is not None:
                        room = self.drop_after - self.upstream_bytes
                        data = data[: max(room, 0)]
                        if room <= 0:
                            self.dropped.set()
                            break
                    try:
                        peers[source].sendall(data)
                    except OSError:
                        self.dropped.set()
                        break
                    if source is client:
                        self.upstream_bytes += len(data)
        _reset(client)
        _reset(server)

    def drop(self) -> None:
        """Reset every connection through the proxy (and refuse to carry new ones)."""
        self.dropped.set()
        for thread in list(self._threads):
            thread.join(timeout=10)

    def close(self) -> None:
        self._closed.set()
        self.drop()
        self.listener.close()
        self._accepter.join(timeout=10)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.close()


ProxyFactory = Callable[..., DroppingProxy]
GatewayFactory = Callable[..., GatewayThread]


def require_tool(name: str) -> str:
    """The path of a client the tests need; a missing tool is a failure (scripts/install-test-deps-sftp)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run scripts/install-test-deps-sftp")
    return path


def eftgw_cli(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``eftgw`` admin CLI in a subprocess on the same data dir as a gateway."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "EFTGW_DATA_DIR": str(data_dir),
        **backend_for(data_dir),
        **(env or {}),
    }
    full_env.pop("EFTGW_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "eftgw", *args], env=full_env, capture_output=True, text=True, timeout=120
    )


def utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


# raw SFTP requests, as particular clients send them ---------------------------------------------------

FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_EXCL = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def open_with_flags(client: paramiko.SFTPClient, path: str, flags: int) -> paramiko.SFTPFile:
    """SSH_FXP_OPEN with exactly these pflags (paramiko's ``open`` only knows mode strings)."""
    kind, msg = client._request(paramiko.sftp.CMD_OPEN, path, flags, paramiko.SFTPAttributes())
    if kind != paramiko.sftp.CMD_HANDLE:
        raise paramiko.SFTPError("expected a handle")
    handle = paramiko.SFTPFile(client, msg.get_binary(), "w")
    handle.set_pipelined(True)
    return handle


def fsetstat_size(handle: paramiko.SFTPFile, size: int, mtime: int | None = None) -> None:
    """SSH_FXP_FSETSTAT with a size (and a modification time), as OpenSSH and lftp send it."""
    attrs = paramiko.SFTPAttributes()
    attrs.st_size = size
    if mtime is not None:
        attrs.st_atime = attrs.st_mtime = mtime
    handle.sftp._request(paramiko.sftp.CMD_FSETSTAT, handle.handle, attrs)


def write_until_dropped(handle: paramiko.SFTPFile, data: bytes, start: int = 0, chunk: int = 32768) -> int:
    """Write ``data[start:]`` in client-sized pieces until the connection breaks; return the bytes sent."""
    handle.seek(start)
    sent = start
    try:
        for offset in range(start, len(data), chunk):
            handle.write(data[offset : offset + chunk])
            sent = offset + len(data[offset : offset + chunk])
        handle.flush()
        handle.stat()  # a request that needs an answer: fails once the connection is gone
    except (OSError, EOFError, paramiko.SSHException):
        return sent
    raise AssertionError("the connection was expected to drop before the end of the data")


def through(proxy: DroppingProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=30)


def settled_upload(gateway: GatewayThread, name: str, case_id: str = "CASE-1") -> Upload:
    """The upload in progress of that name, once the gateway has noticed the drop and stopped changing it."""
    seen: list[int] = []

    def steady() -> bool:
        uploads = [u for u in gateway.active_uploads(case_id) if u.name == name]
        if not uploads or gateway.call(_writer_live(gateway, uploads[0].id)):
            return False
        seen.append(uploads[0].offset)
        return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]

    wait_until(steady, timeout=60, interval=0.1)
    return next(u for u in gateway.active_uploads(case_id) if u.name == name)


async def _writer_live(gateway: GatewayThread, upload_id: str) -> bool:
    return gateway.sftp.context.writers.get(upload_id) is not None
