"""The webhook sender: pushes the outbox's integration events (:mod:`eftgw.events`) to ``EFTGW_WEBHOOK_URL``.

Each event is POSTed as its :meth:`~eftgw.events.Event.as_json` body, signed per Standard Webhooks with the
``standardwebhooks`` library: ``webhook-id`` is the event id (the receiver's idempotency key, the same on
every retry), ``webhook-timestamp`` the time of the attempt, ``webhook-signature`` ``v1,<base64 HMAC>``.

- A 2xx answer is a delivery. Anything else, a timeout or a connection error is a failure: the event is tried
  again after a random wait of up to ``retry_base * 2^attempts`` seconds (exponential backoff with full
  jitter, capped at ``retry_max``), until it is ``max_age`` old; the attempt that fails after that makes it a
  dead letter (``eftgw events list --state dead``, ``eftgw events replay``).
- Events of one case go out one at a time, in order: the outbox only offers each case's oldest pending
  event. Different cases are sent in parallel, at most ``concurrency`` at once, through a connection pool of
  that size.
- The sender looks for due events every ``poll_interval`` seconds, at once when a delivery finishes (the
  case's next event is then due), and when :meth:`WebhookSender.wake` is called: ``serve`` calls it after
  each commit of its own process that stored events (events other nodes commit wait for the next poll).
- One node per region sends: :func:`run_events` campaigns for the ``events`` election and sends only while
  this node leads. With PostgreSQL, another node takes over within the lease's ``ttl`` after it dies.

The sender is its own task with its own HTTP client; it holds no database connection while it waits for the
receiver, so a slow or failing receiver never slows uploads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from standardwebhooks import Webhook

from eftgw import metrics
from eftgw.clock import Clock
from eftgw.config import Settings
from eftgw.events import Delivery, Event
from eftgw.metadata.election import elect
from eftgw.metadata.events import watch_commits
from eftgw.metadata.repository import SqlRepository
from eftgw.ports import EventRepository

log = logging.getLogger("eftgw.webhooks")

USER_AGENT = "eftgw-webhooks"


def event_body(event: Event) -> str:
    """The JSON text of one event as sent (compact; signed exactly as sent)."""
    return json.dumps(event.as_json(), separators=(",", ":"), ensure_ascii=False)


def signed_request(webhook: Webhook, event: Event, sent_at: dt.datetime) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one attempt to deliver ``event``, signed as of ``sent_at``."""
    body = event_body(event)
    stamp = sent_at.astimezone(dt.UTC).replace(microsecond=0)
    headers = {
        "webhook-id": event.id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": webhook.sign(event.id, stamp, body),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    return body.encode(), headers


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: ``reason`` is ``None`` for a delivery, else why it failed."""

    status: int | None
    reason: str | None = None
    error: str = ""

    @property
    def delivered(self) -> bool:
        return self.reason is None


def failure_of_status(status: int) -> str:
    if 400 <= status < 500:
        return "status_4xx"
    if 500 <= status < 600:
        return "status_5xx"
    return "status_other"


def backoff(attempts: int, base: float, cap: float, rng: Callable[[float, float], float]) -> float:
    """Seconds to wait after the ``attempts``-th failure: full jitter over ``min(cap, base * 2^(n-1))``."""
    ceiling = min(cap, base * 2.0 ** min(max(attempts - 1, 0), 62))
    return rng(0.0, ceiling)


class WebhookSender:
    """Delivers due events from an :class:`~eftgw.ports.EventRepository` to one URL."""

    def __init__(
        self,
        repo: EventRepository,
        url: str,
        secret: str,
        clock: Clock,
        *,
        timeout: float = 10.0,
        max_age: dt.timedelta = dt.timedelta(hours=72),
        concurrency: int = 8,
        poll_interval: float = 0.2,
        retry_base: float = 1.0,
        retry_max: float = 3600.0,
        rng: Callable[[float, float], float] = random.uniform,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.repo = repo
        self.url = url
        self.webhook = Webhook(secret)
        self.clock = clock
        self.timeout = timeout
        self.max_age = max_age
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.rng = rng
        self.wall = wall  # signatures carry real time: receivers check it against theirs
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, repo: EventRepository, settings: Settings, clock: Clock) -> WebhookSender:
        assert settings.webhook_url is not None and settings.webhook_secret is not None  # Settings checked
        return cls(
            repo,
            settings.webhook_url,
            settings.webhook_secret.get_secret_value(),
            clock,
            timeout=settings.webhook_timeout,
            max_age=dt.timedelta(seconds=settings.webhook_max_age),
            concurrency=settings.webhook_concurrency,
            poll_interval=settings.webhook_poll_interval,
            retry_base=settings.webhook_retry_base,
            retry_max=settings.webhook_retry_max,
        )

    def wake(self) -> None:
        """Look for due events now rather than at the next poll."""
        self._wake.set()

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": USER_AGENT},
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> WebhookSender:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def post(self, event: Event) -> Attempt:
        """One attempt to deliver ``event``; never raises for the receiver's or the network's faults."""
        assert self._session is not None, "open() the sender first"
        body, headers = signed_request(self.webhook, event, self.wall())
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return Attempt(resp.status)
                return Attempt(resp.status, failure_of_status(resp.status), f"HTTP {resp.status}")
        except TimeoutError:
            return Attempt(None, "timeout", f"no answer in {self.timeout:g} s")
        except aiohttp.ClientError as exc:
            return Attempt(None, "connection", f"{type(exc).__name__}: {exc}"[:500])

    async def deliver(self, delivery: Delivery) -> str:
        """Send one due event and record the outcome: ``delivered``, ``retry`` or ``dead``."""
        event = delivery.event
        assert event.seq is not None, "only stored events are delivered"
        attempt = await self.post(event)
        now = self.clock.now()
        if attempt.delivered:
            assert attempt.status is not None
            await self.repo.record_delivered(event.seq, now, attempt.status)
            outcome = "delivered"
        else:
            assert attempt.reason is not None
            metrics.WEBHOOK_FAILURES.labels(attempt.reason).inc()
            deadline = event.at + self.max_age
            if now >= deadline:
                await self.repo.record_dead(event.seq, now, attempt.status, attempt.error)
                log.warning(
                    "event %s is a dead letter after %d attempts: %s",
                    event.id,
                    delivery.attempts + 1,
                    attempt.error,
                )
                outcome = "dead"
            else:
                wait = backoff(delivery.attempts + 1, self.retry_base, self.retry_max, self.rng)
                retry_at = min(now + dt.timedelta(seconds=wait), deadline)
                await self.repo.record_failure(event.seq, retry_at, attempt.status, attempt.error)
                outcome = "retry"
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        return outcome

    async def run(self, leading: Callable[[], bool] = lambda: True) -> None:
        """Deliver due events while ``leading()`` (checked before each start), until cancelled."""
        running: dict[str, asyncio.Task[str]] = {}  # by case (or event, for events without a case)
        try:
            while True:
                if leading() and len(running) < self.concurrency:
                    try:
                        due = await self.repo.due_deliveries(
                            self.clock.now(), self.concurrency + len(running)
                        )
                    except Exception:
                        log.exception("webhooks: the outbox is unreachable; retrying")
                        due = []
                    for delivery in due:
                        key = delivery.event.case_id or f"event:{delivery.event.id}"
                        if key in running:
                            continue
                        if len(running) >= self.concurrency:
                            break
                        running[key] = asyncio.create_task(self.deliver(delivery), name=f"webhook-{key}")
                self._wake.clear()
                waker = asyncio.create_task(self._wake.wait())
                try:
                    await asyncio.wait(
                        [waker, *running.values()],
                        timeout=self.poll_interval,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    waker.cancel()
                for key, task in list(running.items()):
                    if task.done():
                        del running[key]
                        if not task.cancelled() and task.exception() is not None:
                            log.error("webhooks: recording a delivery failed", exc_info=task.exception())
        finally:
            for task in running.values():
                task.cancel()
            for task in running.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def refresh_outbox_stats(repo: EventRepository, clock: Clock) -> None:
    """Set the outbox gauges (depth, oldest pending age) from the database."""
    pending, oldest = await repo.outbox_stats()
    metrics.EVENTS_PENDING.set(pending)
    age = (clock.now() - oldest).total_seconds() if oldest is not None else 0.0
    metrics.EVENTS_OLDEST_PENDING.set(max(age, 0.0))


async def keep_outbox_stats(repo: EventRepository, clock: Clock, interval: float = 5.0) -> None:
    """Refresh the outbox gauges every ``interval`` seconds on every node, until cancelled."""
    while True:
        try:
            await refresh_outbox_stats(repo, clock)
        except Exception:
            log.exception("webhooks: outbox statistics unavailable; retrying")
        await asyncio.sleep(interval)


async def run_events(repo: SqlRepository, settings: Settings, clock: Clock) -> None:
    """The events job of ``serve``: outbox gauges on every node; with ``EFTGW_WEBHOOK_URL``, the sender on the
    node that leads the region's ``events`` election. Runs until cancelled."""
    stats = asyncio.create_task(keep_outbox_stats(repo, clock), name="outbox-stats")
    try:
        if settings.webhook_url is None:
            log.info("EFTGW_WEBHOOK_URL is not set: events are kept for the pull API, none are sent")
            await stats
            return
        async with (
            WebhookSender.from_settings(repo, settings, clock) as sender,
            elect(repo, "events", ttl=settings.webhook_leader_ttl) as leadership,
        ):
            log.info("webhooks to %s, sent by the node that leads the events election", settings.webhook_url)
            unwatch = watch_commits(repo.engine, sender.wake)  # this node's own events go out at once
            try:
                await sender.run(lambda: leadership.is_leader)
            finally:
                unwatch()
    finally:
        stats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stats
