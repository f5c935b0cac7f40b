"""A real webhook receiver for the tests: an aiohttp server on a loopback port, in a thread of its own (so
test code that blocks, such as a CLI call, never delays its answers), that records every request and verifies
every signature with ``standardwebhooks.Webhook(secret).verify``.

It can answer with any status, hold requests unanswered (until released or for a time), and go down (its
listener closed: connections are refused) and come back on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

from tests.support import free_port


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class Received:
    """One request as the receiver got it; ``payload`` is what ``Webhook.verify`` returned."""

    id: str
    headers: dict[str, str]
    payload: dict[str, Any]
    status: int  # what the receiver answered
    at: float  # time.time() when the request arrived


class Receiver:
    """Records webhook requests at ``url``; answers ``status`` (204 by default) after ``hold`` seconds (or
    when :meth:`release` is called, whichever comes first)."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret or new_secret()
        self.port = free_port()
        self.status = 204
        self.hold = 0.0
        self.requests: list[Received] = []  # answered requests, in the order they arrived
        self.arrived: list[str] = []  # ids of every request as it arrived, answered or not
        self.unverified: list[str] = []  # requests whose signature did not verify (a test asserts none)
        self.holding = 0  # requests being held unanswered right now
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhook-receiver", daemon=True)
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/eftgw"

    def env(self, **extra: str) -> dict[str, str]:
        """Settings (``EFTGW_*`` variables) that make a gateway send here."""
        return {"EFTGW_WEBHOOK_URL": self.url, "EFTGW_WEBHOOK_SECRET": self.secret, **extra}

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(30)

    def start(self) -> Receiver:
        self._thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        self._release = asyncio.Event()
        await self._up()

    async def _up(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/eftgw", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()

    async def _down(self) -> None:
        """Stop listening and close every connection, kept-alive ones too."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def down(self) -> None:
        """Close the listener: connections are refused until :meth:`up`."""
        self._call(self._down())

    def up(self) -> None:
        self._call(self._up())

    def release(self) -> None:
        """Answer every held request now, and hold no more."""
        self.hold = 0.0

        def wake() -> None:
            assert self._release is not None
            self._release.set()

        self._loop.call_soon_threadsafe(wake)

    def stop(self) -> None:
        async def cleanup() -> None:
            assert self._release is not None
            self._release.set()
            if self._runner is not None:
                await self._runner.cleanup()

        self._call(cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        arrived = time.time()
        with self._lock:
            self.arrived.append(headers.get("webhook-id", "?"))
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except Exception as exc:  # recorded; the test fails on any
            with self._lock:
                self.unverified.append(f"{headers.get('webhook-id')}: {exc}")
            return web.Response(status=400)
        if self.hold > 0:
            assert self._release is not None
            with self._lock:
                self.holding += 1
            try:
                await asyncio.wait_for(self._release.wait(), self.hold)
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    self.holding -= 1
        status = self.status
        with self._lock:
            self.requests.append(Received(headers["webhook-id"], headers, payload, status, arrived))
        return web.Response(status=status)

    # What arrived -----------------------------------------------------------------------------------------

    def delivered(self) -> list[Received]:
        """Requests answered with 2xx, in arrival order."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def delivered_ids(self) -> list[str]:
        return [r.id for r in self.delivered()]

    def of_type(self, type: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.delivered() if r.payload["type"] == type]

    def wait_for(self, condition: Callable[[Receiver], bool], timeout: float = 30.0) -> None:
        """Poll until ``condition(self)`` holds; fail (with what arrived) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self):
                return
            time.sleep(0.05)
        got = [(r.payload["type"], r.payload["case_id"], r.status) for r in self.requests]
        raise AssertionError(f"webhooks not received within {timeout} s; got {got}")

    async def until(self, condition: Callable[[Receiver], bool], within: float = 30.0) -> None:
        """:meth:`wait_for` for async tests (the event loop keeps running)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if condition(self):
                return
            await asyncio.sleep(0.05)
        got = [(r.payload["type"], r.payload["case_id"], r.status) for r in self.requests]
        raise AssertionError(f"webhooks not received within {within} s; got {got}")


def receiving(secret: str | None = None) -> Iterator[Receiver]:
    """A started receiver for a fixture: ``yield from receiving()``; it stops after the test."""
    receiver = Receiver(secret).start()
    try:
        yield receiver
    finally:
        receiver.stop()
        assert receiver.unverified == [], receiver.unverified
