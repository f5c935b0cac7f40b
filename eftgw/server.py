"""``eftgw serve``: HTTPS (tus, files, launch, web client), SFTP and the background workers, one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from eftgw.config import Settings
from eftgw.gateway import Gateway
from eftgw.logs import PROTOCOL_LOG, install_redaction
from eftgw.memory import READ_BUFSIZE  # what a connection's body buffer may hold, counted per upload
from eftgw.metadata.election import run_as_leader
from eftgw.orphans import sweep_orphans
from eftgw.proxy_protocol import ProxyProtocolListener, parse_networks
from eftgw.retention.worker import sweep
from eftgw.sftp import SftpService
from eftgw.tlsutil import ensure_self_signed, server_context
from eftgw.webhooks import run_events

log = logging.getLogger("eftgw.server")


def app_runner(app: web.Application) -> web.AppRunner:
    """The runner that serves ``app`` (the tests' in-process gateway uses it too)."""
    return web.AppRunner(
        app, access_log=None, handler_cancellation=False, logger=PROTOCOL_LOG, read_bufsize=READ_BUFSIZE
    )


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls == "off":
        return None
    if settings.tls_cert and settings.tls_key:
        return server_context(settings.tls_cert, settings.tls_key)
    cert, key = ensure_self_signed(settings.resolved_data_dir / "tls", settings.host)
    return server_context(cert, key)


# Settings an admin command does not need to agree on with the server it administers.
LOCAL_ONLY = frozenset({"EFTGW_DATA_DIR", "EFTGW_CONFIG", "EFTGW_LOG_LEVEL", "EFTGW_LOG_FORMAT"})


def admin_command(settings: Settings) -> str:
    """The start of an admin command that reaches this server's data from any directory."""
    cli = Path(sys.executable).with_name("eftgw")
    eftgw = str(cli) if cli.exists() and shutil.which("eftgw") != str(cli) else "eftgw"
    words = [f"EFTGW_DATA_DIR={shlex.quote(str(settings.resolved_data_dir))}", shlex.quote(eftgw)]
    if settings.config_file is not None:
        words.append(f"--config {shlex.quote(str(settings.config_file))}")
    return " ".join(words)


def banner(settings: Settings, scheme: str, storage: str, sftp_port: int) -> str:
    """What ``serve`` prints at start: where it listens, its absolute data dir, and admin commands that work
    from any directory (a relative data dir would otherwise make them create a second one, with another
    signing key whose tokens this server refuses)."""
    admin = admin_command(settings)
    known = {f"EFTGW_{name.upper()}" for name in Settings.model_fields}
    shared = sorted(name for name in os.environ if name in known and name not in LOCAL_ONLY)
    lines = [
        f"eftgw {settings.region} gateway: {scheme}://{settings.host}:{settings.http_port} "
        f"(data in {settings.resolved_data_dir}, storage {storage})",
        f"  open a case:   {admin} case open CASE-1",
        f"  upload token:  {admin} token CASE-1 --role customer --user alice",
        f"  upload:        POST {settings.resolved_public_url}/api/v1/cases/CASE-1/uploads (tus 1.0.0)",
        f"  browser link:  EFTGW_PUBLIC_URL={shlex.quote(settings.resolved_public_url)} "
        f"{admin} launch CASE-1 --user alice",
        f"  sftp:          port {sftp_port}; accounts: {admin} sftp-account create CASE-1",
    ]
    if shared:
        lines.append("  admin commands also need this server's " + ", ".join(shared))
    return "\n".join(lines)


class ProxyProtocolSite(web.BaseSite):
    """An aiohttp site whose connections are admitted through PROXY protocol v2 (``EFTGW_PROXY_PROTOCOL``).

    The PROXY header comes before TLS, so the listener reads it from the plain socket and only then starts
    TLS and aiohttp's request handling on it (``loop.connect_accepted_socket``).
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        trusted: list[str],
        *,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 512,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._trusted = parse_networks(trusted)
        self.listener: ProxyProtocolListener | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port} (PROXY protocol v2)"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None  # BaseSite's constructor checked that the runner is set up

        async def handoff(sock: socket.socket) -> None:
            await loop.connect_accepted_socket(
                server, sock, ssl=self._ssl_context, ssl_handshake_timeout=60 if self._ssl_context else None
            )

        self.listener = await ProxyProtocolListener.start(
            self._host,
            self._port,
            handoff,
            self._trusted,
            name="https" if self._ssl_context else "http",
            client_speaks_first=True,
            backlog=self._backlog,
        )
        self._server = self.listener


def http_site(runner: web.AppRunner, settings: Settings, context: ssl.SSLContext | None) -> web.BaseSite:
    """The HTTP(S) listener: plain TCP, or admitting connections through PROXY protocol v2."""
    if settings.proxy_protocol == "on":
        return ProxyProtocolSite(
            runner, settings.host, settings.http_port, settings.trusted_proxies, ssl_context=context
        )
    return web.TCPSite(runner, settings.host, settings.http_port, ssl_context=context, backlog=512)


async def serve(settings: Settings, *, ready: Callable[[], None] | None = None) -> None:
    from eftgw.http.app import make_app

    install_redaction()
    gateway = Gateway.build(settings)
    await gateway.start()
    app = make_app(gateway)
    runner = app_runner(app)
    await runner.setup()
    context = tls_context(settings)
    site = http_site(runner, settings, context)
    sftp = SftpService(gateway)
    await sftp.start()  # first: host keys are made on the first start, before the node answers anything
    await site.start()
    # Jobs that must run once per region elect one runner through the database (any number of nodes).
    tasks = [
        asyncio.create_task(
            run_as_leader(
                gateway.repo, "retention", settings.retention_interval, lambda: sweep(gateway.retention)
            ),
            name="retention",
        ),
        asyncio.create_task(
            run_as_leader(
                gateway.repo,
                "orphan-sweep",
                3600,
                lambda: sweep_orphans(gateway.repo, gateway.store, gateway.clock.now()),
            ),
            name="orphan-sweep",
        ),
        # Integration events: outbox gauges here; webhooks from the node leading the "events" election.
        asyncio.create_task(run_events(gateway.repo, settings, gateway.clock), name="events"),
    ]
    scheme = "https" if context else "http"
    if settings.proxy_protocol == "on":
        log.info(
            "PROXY protocol v2 on HTTP and SFTP; trusted proxies: %s", ", ".join(settings.trusted_proxies)
        )
    if context is None:
        log.warning("TLS is off: serving plain HTTP; only run this behind a TLS-terminating load balancer")
    text = banner(settings, scheme, gateway.store.name, sftp.bound_port)
    if settings.log_format == "json":  # the output is log lines only: one JSON object each
        log.info("%s; SFTP on port %d", text.splitlines()[0], sftp.bound_port)
    else:
        print(text, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await sftp.stop()
        await runner.cleanup()
        await gateway.close()
