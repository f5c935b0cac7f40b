"""``eftgw serve``: HTTPS (tus, files API, launch, web client), SFTP and the background workers in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from eftgw.config import Settings
from eftgw.gateway import Gateway
from eftgw.model import SYSTEM
from eftgw.sftp import SftpService
from eftgw.tlsutil import ensure_self_signed, server_context

log = logging.getLogger("eftgw.server")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls == "off":
        return None
    if settings.tls_cert and settings.tls_key:
        return server_context(settings.tls_cert, settings.tls_key)
    cert, key = ensure_self_signed(settings.resolved_data_dir / "tls", settings.host)
    return server_context(cert, key)


async def periodic(name: str, interval: float, job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` every ``interval`` seconds; a failure is logged and retried next time, never fatal."""
    while True:
        try:
            await job()
        except Exception:
            log.exception("background job %s failed; retrying in %.0f s", name, interval)
        await asyncio.sleep(interval)


async def serve(settings: Settings, *, ready: Callable[[], None] | None = None) -> None:
    from eftgw.http.app import make_app  # noqa: PLC0415 - keeps the CLI's admin commands light

    gateway = Gateway.build(settings)
    await gateway.start()
    app = make_app(gateway)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
    await runner.setup()
    context = tls_context(settings)
    site = web.TCPSite(runner, settings.host, settings.http_port, ssl_context=context, backlog=512)
    sftp = SftpService(gateway)
    await sftp.start()  # first: host keys are made on the first start, before the node answers anything
    await site.start()
    tasks = [
        asyncio.create_task(
            periodic("upload-expiry", 60, lambda: gateway.uploads.sweep_expired(SYSTEM)), name="upload-expiry"
        ),
        asyncio.create_task(
            periodic("session-expiry", 300, lambda: gateway.repo.delete_expired(gateway.clock.now())),
            name="session-expiry",
        ),
    ]
    scheme = "https" if context else "http"
    if context is None:
        log.warning("TLS is off: serving plain HTTP; only run this behind a TLS-terminating load balancer")
    print(
        f"eftgw {settings.region} gateway: {scheme}://{settings.host}:{settings.http_port} "
        f"(data in {settings.resolved_data_dir}, storage {gateway.store.name})\n"
        f"  open a case:   eftgw case open CASE-1\n"
        f"  upload token:  eftgw token CASE-1 --role customer --user alice\n"
        f"  upload:        POST {settings.resolved_public_url}/api/v1/cases/CASE-1/uploads (tus 1.0.0)\n"
        f"  sftp:          port {sftp.bound_port}; accounts: eftgw sftp-account create CASE-1",
        flush=True,
    )
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
