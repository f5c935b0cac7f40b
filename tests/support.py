"""Test support: gateways on real loopback sockets, in-process or as a real ``eftgw serve`` process.

Backends: by default the embedded one (SQLite + local directory). With ``EFTGW_TEST_BACKEND=s3pg`` every
gateway made here uses PostgreSQL (``EFTGW_TEST_DATABASE_URL``) and S3 (``EFTGW_TEST_S3_*``), each test
with its own database and bucket, so the same suites prove both. A missing service fails the test; it is
never skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from eftgw.clock import Clock
from eftgw.config import Settings
from eftgw.gateway import Gateway
from eftgw.http.app import make_app
from eftgw.model import Role
from eftgw.server import app_runner, tls_context
from eftgw.storage.filesystem import FilesystemWriter
from eftgw.storage.s3 import S3Store
from eftgw.storage.s3_writer import S3Writer

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int, besides: int | None = None) -> list[int]:
    """``count`` free ports, all different (and different from ``besides``): each socket stays bound until
    all are chosen. Two calls of :func:`free_port` in a row can return the same port, since the kernel may
    hand out a port again as soon as it is released (a node's HTTP and SFTP listeners collided so in CI)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port != besides:
                ports.append(port)
        return ports


def backend() -> str:
    return os.environ.get("EFTGW_TEST_BACKEND", "embedded")


def backend_env(name: str) -> dict[str, str]:
    """Settings (as EFTGW_* variables) that give a fresh database and bucket of the selected backend."""
    if backend() == "embedded":
        return {}
    if backend() != "s3pg":
        raise RuntimeError(f"unknown EFTGW_TEST_BACKEND {backend()!r}")
    from tests.services import fresh_bucket, fresh_database

    return {
        "EFTGW_DATABASE_URL": fresh_database(name),
        "EFTGW_STORAGE": "s3",
        **fresh_bucket(name),
    }


def fill_disk(disk: Path, leave: int) -> Path:
    """Place a filler file so that about ``leave`` bytes stay free on ``disk``; return its path."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as out:
        out.write(b"\0" * (free - leave))
        out.flush()
        os.fsync(out.fileno())
    return filler


def random_chunks(rng: random.Random, total: int, largest: int) -> list[bytes]:
    """``total`` random bytes from ``rng``, cut into chunks of 1 to ``largest`` bytes (sizes from ``rng``)."""
    data = rng.randbytes(total)
    chunks, at = [], 0
    while at < total:
        size = rng.randint(1, largest)
        chunks.append(data[at : at + size])
        at += size
    return chunks


def client_ssl() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class RunningGateway:
    """An in-process gateway on a real TLS socket; ``url`` is its base URL."""

    gateway: Gateway
    url: str
    runner: web.AppRunner
    env: dict[str, str] = field(default_factory=dict)

    def token(self, case_id: str | None, role: str = "customer", user: str = "alice", ttl: int = 3600) -> str:
        return self.gateway.signer.mint(role=Role(role), user=user, case_id=case_id, ttl=ttl)

    def launch_token(
        self, case_id: str | None, role: str = "customer", user: str = "alice", ttl: int = 120
    ) -> str:
        return self.gateway.signer.mint(role=Role(role), user=user, case_id=case_id, ttl=ttl, typ="launch")

    def uploads_url(self, case_id: str) -> str:
        return f"{self.url}/api/v1/cases/{case_id}/uploads"


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    env = backend_env(data_dir.name)
    values: dict[str, Any] = {"data_dir": data_dir, "http_port": 0}
    for key, value in env.items():
        values[key.removeprefix("EFTGW_").lower()] = value
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_gateway(
    data_dir: Path, *, clock: Clock | None = None, **overrides: Any
) -> AsyncIterator[RunningGateway]:
    port = free_port()
    settings = settings_for(data_dir, http_port=port, **overrides)
    gateway = Gateway.build(settings, clock)
    runner = app_runner(make_app(gateway))
    try:  # a start that fails half-way still closes what it opened (the database engine)
        await gateway.start()
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls_context(settings))
        await site.start()
        scheme = "https" if settings.tls == "on" else "http"
        yield RunningGateway(gateway, f"{scheme}://127.0.0.1:{port}", runner)
    finally:
        await runner.cleanup()
        await gateway.close()


def http_session(**kwargs: Any) -> aiohttp.ClientSession:
    """A client session that trusts the gateway's self-signed certificate and keeps cookies for 127.0.0.1."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_ssl()),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        **kwargs,
    )


def tus_headers(token: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"Tus-Resumable": "1.0.0"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for key, value in extra.items():
        headers[key.replace("_", "-")] = value
    return headers


class ServerProcess:
    """A server process that appends its output to ``log_path``: the one launcher of ``eftgw serve`` for
    tests, whether from this checkout (:class:`GatewayProcess`) or from an installed wheel (``tests/region``).

    Subclasses set ``log_path`` and call :meth:`launch` with their command and readiness check."""

    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    stop_grace: float = 15.0  # seconds between SIGTERM and SIGKILL in stop()

    def launch(
        self,
        argv: list[str],
        env: dict[str, str],
        ready: Callable[[], bool],
        *,
        timeout: float,
        what: str,
        cwd: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        """Start ``argv``, poll ``ready()`` till it holds; fail if the process exits or ``timeout`` passes."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn
            )
        proc = self.proc
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {self.log_tail()}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start in {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def listening(port: int) -> bool:
    """Something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class GatewayProcess(ServerProcess):
    """A real ``python -m eftgw serve`` of this checkout (for kill -9, restarts, and several nodes), or of
    another eftgw checkout ``tree`` (the benchmarks' ``--compare-tree``): its code first on ``PYTHONPATH``,
    and started in it, since ``python -m`` puts the working directory ahead of ``PYTHONPATH`` and of this
    checkout's editable install."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        tree: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.tree = tree.resolve() if tree is not None else None
        if port is None:
            self.port, self.sftp_port = free_ports(2)
        else:
            self.port, (self.sftp_port,) = port, free_ports(1, besides=port)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(self.tree or ROOT),
            "EFTGW_DATA_DIR": str(data_dir),
            "EFTGW_HTTP_PORT": str(self.port),
            "EFTGW_SFTP_PORT": str(self.sftp_port),
            "EFTGW_LOG_LEVEL": "INFO",
            **(env or {}),
        }
        self.proc = None
        self.preexec_fn: Callable[[], None] | None = None  # e.g. lower the process's limits
        self.log_path = data_dir.parent / f"{data_dir.name}-{self.port}.log"
        if self.tree is not None:
            probe = [sys.executable, "-c", "import eftgw; print(eftgw.__file__)"]
            loaded = subprocess.run(
                probe, cwd=self.tree, env=self.env, capture_output=True, text=True, check=True
            )
            if not Path(loaded.stdout.strip()).is_relative_to(self.tree):
                raise RuntimeError(f"a gateway of {self.tree} would run {loaded.stdout.strip()}")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        """Start the node; return once its HTTPS port accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.launch(
            [sys.executable, "-m", "eftgw", "serve"],
            self.env,
            lambda: listening(self.port),
            timeout=timeout,
            what="gateway",
            preexec_fn=self.preexec_fn,
            cwd=self.tree,
        )
        return self

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eftgw", *args],
            env={**self.env, "EFTGW_LOG_LEVEL": "WARNING"},
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
            cwd=self.tree,
        )

    def token(self, case_id: str | None, role: str = "customer", user: str = "alice") -> str:
        """An access token as ``eftgw token CASE --role ROLE --user USER`` prints it: the same code path
        (``Gateway.build`` with the node's settings, then its signer), run in this process because tests ask
        for many and each CLI start costs a second or more. ``tests/test_cli.py`` runs the command itself."""
        signer = Gateway.build(self.settings()).signer
        return signer.mint(role=Role(role), user=user, case_id=case_id, ttl=3600)

    def open_case(self, case_id: str) -> None:
        """Open ``case_id`` as the portal does (``POST /api/v1/integration/cases/{case}/open`` with a service
        token): ``eftgw case open`` would start a Python process, 1.5 to 3 s on a loaded machine, for a test's
        set-up; ``tests/test_cli.py`` and ``tests/retention/test_scenarios.py`` run the command themselves."""
        request = urllib.request.Request(
            f"{self.url}/api/v1/integration/cases/{case_id}/open",
            data=b"{}",
            method="POST",
            headers={
                "Authorization": f"Bearer {self.token(None, role='service', user='portal')}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, context=client_ssl(), timeout=60) as reply:
            assert reply.status == 200, reply.status
            assert json.loads(reply.read())["state"] == "open"

    def settings(self) -> Settings:
        """The node's settings, as its process reads them from the environment."""
        fields = set(Settings.model_fields)
        values = {
            key.removeprefix("EFTGW_").lower(): value
            for key, value in self.env.items()
            if key.startswith("EFTGW_") and key.removeprefix("EFTGW_").lower() in fields
        }
        return Settings(**values)

    async def stored_keys(self, prefix: str) -> list[str]:
        """What the node's object store holds under ``prefix`` (any backend), listed from outside."""
        from eftgw.gateway import build_store

        store = build_store(self.settings())
        await store.open()
        try:
            return await store.list_keys(prefix)
        finally:
            await store.close()


@contextlib.contextmanager
def gateway_process(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(data_dir, {**backend_env(data_dir.name + uuid.uuid4().hex[:6]), **(env or {})})
    try:
        yield proc.start()
    finally:
        proc.stop()


@contextlib.contextmanager
def two_nodes(tmp_path: Path, kind: str = "s3pg") -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two started nodes with their own data dirs, sharing the issuer key, one database and one store:
    ``s3pg`` is a fresh PostgreSQL database and S3 bucket (the test run's servers), ``sqlite-dir`` one SQLite
    file and one directory on this machine."""
    from tests.services import fresh_bucket, fresh_database

    label = "nodes" + uuid.uuid4().hex[:6]
    shared = {"EFTGW_SIGNING_KEY": str(tmp_path / "shared-issuer.pem")}
    if kind == "s3pg":
        shared |= {"EFTGW_DATABASE_URL": fresh_database(label), "EFTGW_STORAGE": "s3", **fresh_bucket(label)}
    elif kind == "sqlite-dir":
        shared |= {
            "EFTGW_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite3'}",
            "EFTGW_STORAGE": "filesystem",
            "EFTGW_STORAGE_DIR": str(tmp_path / "shared-objects"),
        }
    else:
        raise ValueError(f"unknown kind of shared backend {kind!r}")
    a = GatewayProcess(tmp_path / "node-a", shared)
    a.start()
    b = GatewayProcess(tmp_path / "node-b", shared)
    try:
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def on_node(node: GatewayProcess, url: str) -> str:
    """The same API URL, addressed to another node (as a load balancer without stickiness would)."""
    return node.url + "/api/" + url.split("/api/", 1)[1]


def writer_block_size(gw: RunningGateway) -> int:
    """The block the body pipeline gathers for an HTTPS upload to the gateway's store (S3's 4 MiB, the
    filesystem's 2 MiB)."""
    return S3Writer.block_size if isinstance(gw.gateway.store, S3Store) else FilesystemWriter.block_size
