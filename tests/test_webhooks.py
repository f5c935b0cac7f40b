"""The webhook sender against a real receiver on a loopback port and the real outbox (the test backend's
database): signatures that ``standardwebhooks`` verifies, per-case order with cases in parallel, retries with
exponential backoff and full jitter, dead letters, and ``eftgw events list|replay`` making them deliverable
again. Time is driven by a fixed clock and a recorded jitter source, never by sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from eftgw import metrics
from eftgw.cli import OPERATOR, main
from eftgw.clock import FixedClock
from eftgw.events import Event, EventFactory
from eftgw.gateway import Gateway
from eftgw.metadata.events import append_events, watch_commits
from eftgw.webhooks import WebhookSender, backoff
from tests.support import ROOT, free_port, settings_for
from tests.webhook_receiver import Receiver, new_secret, receiving


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    clock = FixedClock(dt.datetime.now(dt.UTC))  # near real time: the CLI's replay uses the system clock
    gw = Gateway.build(settings_for(tmp_path / "gw"), clock)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


class Jitter:
    """A jitter source that records each range asked for and answers its top (the longest wait)."""

    def __init__(self) -> None:
        self.ceilings: list[float] = []

    def __call__(self, low: float, high: float) -> float:
        assert low == 0.0
        self.ceilings.append(high)
        return high


def failures(reason: str) -> float:
    """``eftgw_webhook_failures_total{reason=...}`` as ``/metrics`` would show it."""
    return metrics.REGISTRY.get_sample_value("eftgw_webhook_failures_total", {"reason": reason}) or 0.0


def sender_for(gw: Gateway, receiver: Receiver, **options: object) -> WebhookSender:
    values: dict[str, object] = {"timeout": 5.0, "max_age": dt.timedelta(hours=72), "concurrency": 4}
    values |= options
    return WebhookSender(gw.repo, receiver.url, receiver.secret, gw.clock, **values)  # type: ignore[arg-type]


async def stored(gw: Gateway, *events: Event) -> list[Event]:
    await gw.repo.add_events(list(events))
    listed = await gw.repo.list_deliveries(None, 0, 1000)
    by_id = {d.event.id: d.event for d in listed}
    return [by_id[e.id] for e in events]


async def pass_once(sender: WebhookSender) -> list[str]:
    """Deliver every event due now, one per case, as one pass of the sender loop does; the outcomes."""
    due = await sender.repo.due_deliveries(sender.clock.now(), 100)
    return list(await asyncio.gather(*(sender.deliver(d) for d in due)))


@dataclass
class Cli:
    """``eftgw ARGS`` against a gateway's data, run by the real entry point (argparse, settings from the
    environment, its own gateway and event loop) in a worker thread, as an operator runs it beside
    ``serve``."""

    gw: Gateway
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]

    async def __call__(self, *args: str) -> tuple[int, str, str]:
        settings = self.gw.settings
        self.monkeypatch.setenv("EFTGW_DATA_DIR", str(settings.resolved_data_dir))
        if settings.database_url:
            self.monkeypatch.setenv("EFTGW_DATABASE_URL", settings.database_url)
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, list(args))
        out, err = self.capsys.readouterr()
        return code, out, err


async def test_every_webhook_carries_the_event_and_verifies_with_standardwebhooks(gateway, receiver) -> None:
    """Each event is POSTed once as its JSON, with ``webhook-id`` = the event id and a timestamp and signature
    that ``Webhook(secret).verify`` accepts (the receiver verifies every request); the event is then
    recorded as delivered with the receiver's status."""
    factory = EventFactory("emea", gateway.clock)
    one = factory.make("case.closed", "C-1", files=2, bytes=300)
    two = factory.make(
        "sftp_account.created", None, username="c-1-x", expires_at="2026-03-09T09:00:00Z", by="e"
    )
    await stored(gateway, one, two)
    async with sender_for(gateway, receiver) as sender:
        assert sorted(await pass_once(sender)) == ["delivered", "delivered"]
    got = {r.id: r for r in receiver.delivered()}
    assert set(got) == {one.id, two.id}
    assert got[one.id].payload == one.as_json()
    assert got[one.id].payload["region"] == "emea" and got[one.id].payload["data"] == {
        "files": 2,
        "bytes": 300,
    }
    assert got[one.id].headers["webhook-id"] == one.id
    assert got[one.id].headers["webhook-signature"].startswith("v1,")
    assert abs(int(got[one.id].headers["webhook-timestamp"]) - got[one.id].at) < 60  # the attempt's own time
    delivered = await gateway.repo.list_deliveries("delivered", 0, 10)
    assert {d.event.id for d in delivered} == {one.id, two.id}
    assert {d.last_status for d in delivered} == {204}
    assert await gateway.repo.list_deliveries("pending", 0, 10) == []


async def test_one_case_in_order_while_other_cases_go_in_parallel(gateway, receiver) -> None:
    """With the receiver holding requests, the heads of three cases are all in flight at once, while the
    second event of a case is not sent before its first is answered; after release every event arrives,
    each case's in order."""
    factory = EventFactory("us", gateway.clock)
    events = [factory.make("case.closed", f"C-{i}", files=i, bytes=i) for i in range(3)]
    events += [factory.make("case.reopened", f"C-{i}", files=i, bytes=i) for i in range(3)]
    await stored(gateway, *events)
    receiver.hold = 30.0
    async with sender_for(gateway, receiver, poll_interval=0.05) as sender:
        loop = asyncio.create_task(sender.run())
        try:
            await receiver.until(lambda r: r.holding == 3)
            assert sorted(receiver.arrived) == sorted(e.id for e in events[:3])  # only the heads
            receiver.release()
            await receiver.until(lambda r: len(r.delivered()) == 6)
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
    for i in range(3):
        ids = [r.id for r in receiver.delivered() if r.payload["case_id"] == f"C-{i}"]
        assert ids == [events[i].id, events[i + 3].id]


async def test_failures_back_off_exponentially_with_full_jitter_then_become_dead_letters(
    gateway, receiver
) -> None:
    """A receiver answering 503: each failed attempt sets the next one a random wait of up to
    base * 2^(attempts-1) seconds later (capped), counted by reason; the event is not offered before that
    time; the first failure after ``max_age`` makes it dead, and a dead event no longer holds its case
    back."""
    receiver.status = 503
    jitter = Jitter()
    factory = EventFactory("us", gateway.clock)
    first = factory.make("case.closed", "C-1", files=1, bytes=10)
    second = factory.make("case.reopened", "C-1", files=1, bytes=10)
    await stored(gateway, first, second)
    clock: FixedClock = gateway.clock  # type: ignore[assignment]
    failures_before = failures("status_5xx")
    async with sender_for(
        gateway, receiver, retry_base=2.0, retry_max=30.0, max_age=dt.timedelta(minutes=5), rng=jitter
    ) as sender:
        waits = []
        for _ in range(6):
            assert await pass_once(sender) == ["retry"]
            (pending, *_rest) = await gateway.repo.list_deliveries("pending", 0, 10)
            assert pending.event.id == first.id and pending.last_status == 503
            assert pending.next_attempt_at is not None
            waits.append((pending.next_attempt_at - clock.now()).total_seconds())
            assert await pass_once(sender) == []  # not before its time
            clock.at = pending.next_attempt_at
        assert jitter.ceilings == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        assert waits == jitter.ceilings
        (pending, *_rest) = await gateway.repo.list_deliveries("pending", 0, 10)
        assert pending.attempts == 6 and pending.last_error == "HTTP 503"
        # The retry that would fall after max_age is made at max_age instead, and its failure is final.
        clock.at = first.at + dt.timedelta(minutes=5) - dt.timedelta(seconds=10)
        assert await pass_once(sender) == ["retry"]
        (pending, *_rest) = await gateway.repo.list_deliveries("pending", 0, 10)
        assert pending.next_attempt_at == first.at + dt.timedelta(minutes=5)
        clock.at = pending.next_attempt_at
        assert await pass_once(sender) == ["dead"]
        (dead,) = await gateway.repo.list_deliveries("dead", 0, 10)
        assert dead.event.id == first.id and dead.last_status == 503
        # The case's next event is offered now that the first is dead (and dies the same way).
        (due,) = await gateway.repo.due_deliveries(clock.now(), 10)
        assert due.event.id == second.id
    assert failures("status_5xx") - failures_before == 8
    assert set(receiver.arrived) == {first.id}  # every attempt carried the same id


async def test_timeouts_and_refused_connections_are_failures_with_their_reason(gateway, receiver) -> None:
    """A receiver that does not answer within the timeout, and one that is down, count as failed attempts
    (reasons ``timeout`` and ``connection``) to be retried, not as deliveries."""
    factory = EventFactory("us", gateway.clock)
    event = factory.make("case.closed", "C-1", files=0, bytes=0)
    await stored(gateway, event)
    timeouts = failures("timeout")
    refused = failures("connection")
    receiver.hold = 30.0
    async with sender_for(gateway, receiver, timeout=0.5, rng=lambda lo, hi: 0.0) as sender:
        assert await pass_once(sender) == ["retry"]
        receiver.release()
        receiver.down()
        try:
            assert await pass_once(sender) == ["retry"]
        finally:
            receiver.up()
        (pending,) = await gateway.repo.list_deliveries("pending", 0, 10)
        assert pending.attempts == 2 and pending.last_status is None
        assert await pass_once(sender) == ["delivered"]
    assert failures("timeout") - timeouts == 1
    assert failures("connection") - refused == 1


def backoff_ceiling(attempts: int) -> float:
    return backoff(attempts, 1.0, 3600.0, lambda lo, hi: hi)


@pytest.mark.once  # no gateway, no outbox: the backend does not matter here
def test_the_backoff_ceiling_doubles_up_to_its_cap() -> None:
    """Full jitter draws from [0, min(cap, base * 2^(attempts-1))]: 1, 2, 4, ... seconds, never past the cap,
    even after very many attempts."""
    assert [backoff_ceiling(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert backoff_ceiling(13) == 3600.0 and backoff_ceiling(10_000) == 3600.0


async def test_events_list_shows_dead_letters_and_replay_sends_them_again_with_the_same_id(
    gateway, receiver, monkeypatch, capsys
) -> None:
    """``eftgw events list --state dead`` prints each dead letter as a JSON line (id, type, data, last status
    and error); ``eftgw events replay ID`` makes it pending and due at once, and the sender then delivers it
    with its original id; ``--all-dead`` replays the rest; replaying an id that is not dead exits 1; replay
    without ids nor ``--all-dead`` is a usage error (2)."""
    eftgw = Cli(gateway, monkeypatch, capsys)
    receiver.status = 500
    factory = EventFactory("us", gateway.clock)
    events = [factory.make("case.purged", f"C-{i}", files=i, bytes=i * 10) for i in range(3)]
    await stored(gateway, *events)
    clock: FixedClock = gateway.clock  # type: ignore[assignment]
    async with sender_for(gateway, receiver, max_age=dt.timedelta(seconds=60)) as sender:
        clock.advance(dt.timedelta(seconds=61))
        assert await pass_once(sender) == ["dead"] * 3
        code, out, err = await eftgw("events", "list", "--state", "dead")
        assert code == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert [line["id"] for line in lines] == [e.id for e in events]
        assert {line["state"] for line in lines} == {"dead"}
        assert lines[0]["type"] == "case.purged" and lines[0]["data"] == {"files": 0, "bytes": 0}
        assert lines[0]["last_status"] == 500 and lines[0]["last_error"] == "HTTP 500"
        code, out, _ = await eftgw("events", "list", "--after", str(lines[0]["seq"]), "--limit", "1")
        assert [json.loads(line)["id"] for line in out.splitlines()] == [events[1].id]

        receiver.status = 200
        code, out, err = await eftgw("events", "replay", events[0].id)
        assert code == 0 and json.loads(out) == {"replayed": 1}, err
        assert await pass_once(sender) == ["delivered"]
        code, _, err = await eftgw("events", "replay", events[0].id)  # delivered now, not dead
        assert code == 1 and "not dead letters" in err
        code, out, _ = await eftgw("events", "replay", "--all-dead")
        assert code == 0 and json.loads(out) == {"replayed": 2}
        assert sorted(await pass_once(sender)) == ["delivered", "delivered"]
        code, _, err = await eftgw("events", "replay")
        assert code == 2 and "EVENT_ID" in err
    assert sorted(receiver.delivered_ids()) == sorted(e.id for e in events)
    assert await gateway.repo.list_deliveries("dead", 0, 10) == []


@pytest.mark.once  # no gateway, no outbox: the backend does not matter here
def test_a_bad_webhook_secret_stops_every_command_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A secret that is not ``whsec_`` + base64 of 24 to 64 bytes, a URL without a secret, or a URL that is
    not http(s) is refused at start with exit status 2 and one line naming the variable (never the secret)."""
    monkeypatch.setenv("EFTGW_DATA_DIR", str(tmp_path))
    url = "https://portal.example/hooks"
    cases = [
        ({"EFTGW_WEBHOOK_URL": url, "EFTGW_WEBHOOK_SECRET": "hunter2"}, "whsec_"),
        ({"EFTGW_WEBHOOK_URL": url, "EFTGW_WEBHOOK_SECRET": "whsec_@@@"}, "base64"),
        ({"EFTGW_WEBHOOK_URL": url, "EFTGW_WEBHOOK_SECRET": "whsec_aHVudGVyMg=="}, "24 to 64 bytes"),
        ({"EFTGW_WEBHOOK_URL": url}, "signing secret"),
        ({"EFTGW_WEBHOOK_URL": "ftp://portal.example/", "EFTGW_WEBHOOK_SECRET": "whsec_" + "A" * 44}, "http"),
    ]
    for env, words in cases:
        monkeypatch.delenv("EFTGW_WEBHOOK_SECRET", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert main(["events", "list"]) == 2, env
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("eftgw: EFTGW_WEBHOOK_") and words in line, line
        assert "hunter2" not in line


def readme_receiver(port: int) -> str:
    """The receiver example of the README's "Events" section, listening on ``port`` on loopback."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Events") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")]
    assert "web.run_app(app, port=8080)" in code
    return code.replace("web.run_app(app, port=8080)", f"web.run_app(app, host='127.0.0.1', port={port})")


@pytest.mark.once  # does not depend on the backend
async def test_the_readme_receiver_example_verifies_and_takes_the_gateways_webhooks(
    gateway: Gateway, tmp_path: Path
) -> None:
    """The README's receiver example, run as it stands (its own process), accepts the sender's signed
    webhook (the event is recorded as delivered with its 204) and refuses one signed with another secret."""
    secret = new_secret()
    port = free_port()
    script = tmp_path / "receiver.py"
    script.write_text(readme_receiver(port), encoding="utf-8")
    env = {**os.environ, "EFTGW_WEBHOOK_SECRET": secret, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proc.returncode is None, "the README receiver exited"
            await asyncio.sleep(0.1)
        url = f"http://127.0.0.1:{port}/hooks/eftgw"
        factory = EventFactory("us", gateway.clock)
        good = factory.make("case.closed", "C-7", files=1, bytes=5)
        await stored(gateway, good)
        async with WebhookSender(gateway.repo, url, new_secret(), gateway.clock) as other:
            refused = await other.post(good)
        assert refused.status == 400
        async with WebhookSender(gateway.repo, url, secret, gateway.clock) as sender:
            assert await pass_once(sender) == ["delivered"]
        (done,) = await gateway.repo.list_deliveries("delivered", 0, 10)
        assert done.event.id == good.id and done.last_status == 204
    finally:
        proc.terminate()
        output = (await asyncio.wait_for(proc.communicate(), 30))[0].decode()
    assert "case.closed C-7 {'files': 1, 'bytes': 5}" in output


async def test_commits_that_store_events_wake_the_sender_and_nothing_else_does(gateway: Gateway) -> None:
    """``watch_commits`` reports each committed transaction that stored events (once each, after the commit:
    the events are then visible to another connection), and neither a rolled-back one nor a commit that
    stored none; after ``unwatch`` nothing is reported."""
    seen: list[int] = []
    reported = asyncio.Event()

    def committed() -> None:
        seen.append(1)
        reported.set()

    visible: list[int] = []

    async def check_visible() -> None:
        await reported.wait()
        visible.append(len(await gateway.repo.list_deliveries(None, 0, 100)))

    unwatch = watch_commits(gateway.repo.engine, committed)
    factory = EventFactory("us", gateway.clock)
    try:
        watcher = asyncio.create_task(check_visible())
        await gateway.repo.add_events([factory.make("case.closed", "C-1", files=0, bytes=0)])
        await asyncio.wait_for(watcher, 30)
        assert len(seen) == 1 and visible == [1]
        with contextlib.suppress(RuntimeError):
            async with gateway.repo.engine.begin() as conn:
                await append_events(conn, [factory.make("case.reopened", "C-1", files=0, bytes=0)])
                raise RuntimeError("roll back")
        await gateway.cases.open(OPERATOR, "C-2")  # a commit without events
        await asyncio.sleep(0.2)  # a report is scheduled with call_soon: it would have run by now
        assert len(seen) == 1
        assert len(await gateway.repo.list_deliveries(None, 0, 100)) == 1
    finally:
        unwatch()
    await gateway.repo.add_events([factory.make("case.closed", "C-3", files=0, bytes=0)])
    await asyncio.sleep(0.2)
    assert len(seen) == 1
