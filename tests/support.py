"""Test support: gateways on real loopback sockets, in-process or as a real ``eftgw serve`` process.

Backends: by default the embedded one (SQLite + local directory). With ``EFTGW_TEST_BACKEND=s3pg`` every
gateway made here uses PostgreSQL (``EFTGW_TEST_DATABASE_URL``) and S3 (``EFTGW_TEST_S3_*``), each test
with its own database and bucket, so the same suites prove both. A missing service fails the test; it is
never skipped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
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
from eftgw.logs import PROTOCOL_LOG
from eftgw.model import Role
from eftgw.server import tls_context

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    await gateway.start()
    runner = web.AppRunner(make_app(gateway), handler_cancellation=False, logger=PROTOCOL_LOG)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls_context(settings))
    await site.start()
    scheme = "https" if settings.tls == "on" else "http"
    try:
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


class GatewayProcess:
    """A real ``python -m eftgw serve`` process (for kill -9, restarts, and several nodes)."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.sftp_port = free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "EFTGW_DATA_DIR": str(data_dir),
            "EFTGW_HTTP_PORT": str(self.port),
            "EFTGW_SFTP_PORT": str(self.sftp_port),
            "EFTGW_LOG_LEVEL": "INFO",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.preexec_fn: Callable[[], None] | None = None  # e.g. lower the process's limits
        self.log_path = data_dir.parent / f"{data_dir.name}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process writes to it until it ends
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eftgw", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self.preexec_fn,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gateway did not listen in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eftgw", *args],
            env={**self.env, "EFTGW_LOG_LEVEL": "WARNING"},
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def token(self, case_id: str, role: str = "customer", user: str = "alice") -> str:
        return self.cli("token", case_id, "--role", role, "--user", user).stdout.strip()

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
