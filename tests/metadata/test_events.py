"""The outbox of integration events in the repository, on SQLite and on a real PostgreSQL server: events are
stored with the change they report (or not at all), ``seq`` grows in commit order, and the delivery queries
keep each case's order."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from typing import Any

import pytest
import sqlalchemy as sa

from eftgw.clock import FixedClock
from eftgw.events import Event, EventFactory
from eftgw.metadata import SqlRepository
from eftgw.metadata import schema as t
from eftgw.metadata.events import DUE_AT_ONCE, append_events
from eftgw.model import Case, CaseState, SftpAccount
from tests.metadata.test_repository import T0, at, make_file, make_upload

FACTORY = EventFactory("eu", FixedClock(T0))


def finished(case_id: str | None, name: str = "dump.bin", **changes: Any) -> Event:
    data = {
        "file_id": "f_1",
        "name": name,
        "size": 10,
        "sha256": "ab" * 32,
        "uploader": "alice",
        "role": "customer",
        "via": "http",
        "client": "127.0.0.1",
    }
    return FACTORY.make("file.finished", case_id, **{**data, **changes})


def account(username: str, expires_at: dt.datetime, **changes: Any) -> SftpAccount:
    return SftpAccount(
        username=username,
        case_id="C-1",
        password_hash="x",
        password_sealed="y",
        created_at=T0,
        expires_at=expires_at,
        created_by="eng",
        **changes,
    )


async def test_events_are_stored_once_with_increasing_seq_and_read_after_a_cursor(
    repo: SqlRepository,
) -> None:
    """Stored events come back whole, in seq order, after a cursor and at most ``limit`` of them."""
    first = [finished("C-1", name=f"f{i}") for i in range(5)]
    await repo.add_events(first)
    await repo.add_events([FACTORY.make("sftp_account.expired", None, username="sftp-x", expired_at="t")])
    stored = await repo.events_after(0, 100)
    assert [e.id for e in stored] == [e.id for e in first] + [stored[-1].id]
    seqs = [e.seq for e in stored]
    assert all(s is not None for s in seqs) and seqs == sorted(set(seqs))  # type: ignore[type-var]
    assert stored[0].data == first[0].data and stored[0].at == T0 and stored[0].region == "eu"
    assert stored[-1].case_id is None
    page = await repo.events_after(stored[1].seq or 0, 2)
    assert [e.id for e in page] == [first[2].id, first[3].id]
    with pytest.raises(sa.exc.IntegrityError):  # an id is stored once: it is the receivers' idempotency key
        await repo.add_events([first[0]])


async def test_seq_is_never_reused_after_the_newest_events_are_pruned(repo: SqlRepository) -> None:
    """A cursor past every event stays valid after pruning: new events get larger seqs (AUTOINCREMENT)."""
    await repo.add_events([finished("C-1") for _ in range(3)])
    last = (await repo.events_after(0, 10))[-1].seq or 0
    async with repo.engine.begin() as conn:
        await conn.execute(sa.update(t.events).values(delivered_at=at(1)))
    assert await repo.prune_events(at(3600)) == 3
    await repo.add_events([finished("C-1")])
    assert [e.seq for e in await repo.events_after(0, 10)] == [last + 1]


async def test_a_change_that_fails_stores_no_event_and_one_that_commits_stores_it(
    repo: SqlRepository,
) -> None:
    """finish_upload's file clashes (the transaction rolls back): its event is not stored either."""
    await repo.add_file(make_file("f_u2"))
    clash = make_upload("u2", offset=1000)
    await repo.add_upload(clash)
    with pytest.raises(sa.exc.IntegrityError):
        await repo.finish_upload(clash, make_file("f_u2"), events=[finished("C-1")])
    assert await repo.events_after(0, 10) == []
    good = make_upload("u1", offset=1000)
    await repo.add_upload(good)
    event = finished("C-1")
    await repo.finish_upload(good, make_file("f_u1"), events=[event])
    assert [e.id for e in await repo.events_after(0, 10)] == [event.id]


async def test_change_methods_store_their_events_only_when_they_change_something(repo: SqlRepository) -> None:
    """A file deleted twice or an account revoked twice is reported once; the other change methods store
    their events with the change."""
    closed = FACTORY.make("case.closed", "C-1", files=0, bytes=0)
    await repo.save_case(Case("C-1", CaseState.CLOSED, T0, T0, T0), events=[closed])
    await repo.add_file(make_file("f_1"))
    deleted = [
        FACTORY.make("file.deleted", "C-1", file_id="f_1", name="n", size=1, by="a", role="r", reason="user")
    ]
    assert await repo.delete_file("C-1", "f_1", events=deleted)
    assert not await repo.delete_file(
        "C-1", "f_1", events=[FACTORY.make("file.deleted", "C-1", **deleted[0].data)]
    )
    created = FACTORY.make("sftp_account.created", "C-1", username="sftp-a", expires_at="t", by="eng")
    await repo.add_account(account("sftp-a", at(60)), events=[created])
    revoked = FACTORY.make("sftp_account.revoked", "C-1", username="sftp-a", by="eng")
    assert await repo.revoke_account("sftp-a", at(1), events=[revoked])
    again = FACTORY.make("sftp_account.revoked", "C-1", username="sftp-a", by="eng")
    assert not await repo.revoke_account("sftp-a", at(2), events=[again])
    types = [(e.type, e.id) for e in await repo.events_after(0, 10)]
    assert types == [
        ("case.closed", closed.id),
        ("file.deleted", deleted[0].id),
        ("sftp_account.created", created.id),
        ("sftp_account.revoked", revoked.id),
    ]


async def test_an_account_expiry_is_reported_exactly_once(repo: SqlRepository) -> None:
    """Two sweeps reporting the same expired account at once store one event; an account revoked before it
    expired, or not expired yet, is not reported."""
    await repo.add_account(account("sftp-old", at(10)))
    await repo.add_account(account("sftp-new", at(1000)))
    await repo.add_account(account("sftp-rev", at(10), revoked_at=at(5)))
    due = await repo.accounts_expired_unreported(at(20))
    assert [a.username for a in due] == ["sftp-old"]

    def report() -> list[tuple[str, Event]]:
        return [
            ("sftp-old", FACTORY.make("sftp_account.expired", "C-1", username="sftp-old", expired_at="t"))
        ]

    counts = await asyncio.gather(*(repo.report_expired_accounts(report(), at(20)) for _ in range(4)))
    assert sorted(counts) == [0, 0, 0, 1]
    assert [e.type for e in await repo.events_after(0, 10)] == ["sftp_account.expired"]
    assert await repo.accounts_expired_unreported(at(20)) == []


async def test_a_purge_deletes_settled_events_and_scrubs_names_from_pending_ones(repo: SqlRepository) -> None:
    """Purging a case deletes its delivered and dead events, keeps its pending ones without file names, and
    stores the purge's own event; other cases' events are untouched."""
    await repo.save_case(Case("C-1", CaseState.PURGING, T0, T0, T0))
    delivered, dead, pending, other = finished("C-1"), finished("C-1"), finished("C-1"), finished("C-2")
    expired = FACTORY.make("upload.expired", "C-1", upload_id="u", name="secret.log", offset=1, length=None)
    await repo.add_events([delivered, dead, pending, expired, other])
    by_id = {e.id: e.seq or 0 for e in await repo.events_after(0, 10)}
    await repo.record_delivered(by_id[delivered.id], at(1), 204)
    await repo.record_dead(by_id[dead.id], at(1), 500, "gone")
    purged = FACTORY.make("case.purged", "C-1", files=1, bytes=10)
    await repo.delete_purged_cases(["C-1"], [], events=[purged])
    left = {e.id: e for e in await repo.events_after(0, 10)}
    assert list(left) == [pending.id, expired.id, other.id, purged.id]
    assert left[pending.id].data == {**pending.data, "name": None}
    assert left[expired.id].data == {**expired.data, "name": None}
    assert left[other.id].data == other.data
    async with repo.engine.connect() as conn:
        text = " ".join(str(r) for r in await conn.execute(sa.select(t.events.c.data)))
    assert "secret.log" not in text and "dump.bin" in text  # only the other case's name is left


async def test_delivery_state_is_recorded_listed_replayed_counted_and_pruned(repo: SqlRepository) -> None:
    """Failures count attempts and delay the next; dead events are listed, replayed with the same id, and
    pruned once old; outbox_stats counts what is pending."""
    events = [finished("C-1"), finished("C-2"), finished("C-3")]
    await repo.add_events(events)
    seqs = [e.seq or 0 for e in await repo.events_after(0, 10)]
    await repo.record_failure(seqs[0], at(60), 503, "busy")
    await repo.record_failure(seqs[0], at(120), None, "refused")
    await repo.record_delivered(seqs[1], at(2), 200)
    await repo.record_dead(seqs[2], at(3), 410, "gone")
    first = (await repo.list_deliveries("pending", 0, 10))[0]
    assert first.attempts == 2 and first.next_attempt_at == at(120) and first.last_error == "refused"
    assert [d.state for d in await repo.list_deliveries(None, 0, 10)] == ["pending", "delivered", "dead"]
    [dead] = await repo.list_deliveries("dead", 0, 10)
    assert dead.event.id == events[2].id and dead.attempts == 1  # the attempt that failed for good counts
    assert await repo.outbox_stats() == (1, T0)
    assert await repo.prune_events(at(3600)) == 2  # delivered and dead; the pending one stays
    await repo.add_events([again := finished("C-3")])
    last = (await repo.events_after(0, 10))[-1].seq or 0
    await repo.record_dead(last, at(4), None, "timeout")
    assert await repo.replay(None, at(5)) == 1
    replayed = (await repo.list_deliveries("pending", 0, 10))[-1]
    assert replayed.event.id == again.id and replayed.attempts == 0
    assert replayed.next_attempt_at == DUE_AT_ONCE  # due at once, whatever the replaying node's clock says
    assert await repo.replay(["evt_unknown"], at(6)) == 0
    with pytest.raises(ValueError, match="unknown delivery state"):
        await repo.list_deliveries("lost", 0, 10)


async def test_an_event_made_with_a_clock_ahead_is_due_at_once(repo: SqlRepository) -> None:
    """An event whose time lies ahead of the sender's clock (``retention run --now <later>``, or a node whose
    clock runs fast) is due at once: its first attempt does not wait for its timestamp."""
    ahead = EventFactory("eu", FixedClock(T0 + dt.timedelta(days=40)))
    await repo.add_events([purged := ahead.make("case.purged", "C-9", files=1, bytes=10)])
    assert [d.event.id for d in await repo.due_deliveries(T0, 10)] == [purged.id]


async def test_due_deliveries_keeps_case_order_over_thousands_of_events(repo: SqlRepository) -> None:
    """With 3,000 events in 40 cases (plus caseless ones) in every state, due_deliveries returns exactly each
    case's oldest pending event when it is due, and every due caseless one, oldest first, in one query."""
    rng = random.Random(14)
    cases = [f"C-{i}" for i in range(40)]
    events = [finished(rng.choice(cases) if rng.random() > 0.05 else None) for _ in range(3000)]
    await repo.add_events(events)
    states: dict[str, list[int]] = {"delivered": [], "dead": [], "later": [], "due": []}
    for seq in range(1, 3001):  # settle a random two thirds, delay some of the rest
        roll = rng.random()
        states[
            "delivered" if roll < 0.5 else "dead" if roll < 0.65 else "later" if roll < 0.8 else "due"
        ].append(seq)
    changes: dict[str, dict[str, Any]] = {
        "delivered": {"delivered_at": at(1)},
        "dead": {"dead_at": at(1)},
        "later": {"next_attempt_at": at(600), "attempts": 1},
    }
    async with repo.engine.begin() as conn:
        for state, values in changes.items():
            for start in range(0, len(states[state]), 500):
                chunk = states[state][start : start + 500]
                await conn.execute(sa.update(t.events).where(t.events.c.seq.in_(chunk)).values(**values))
    deliveries = await repo.list_deliveries("pending", 0, 10_000)
    heads: dict[str, Any] = {}
    expected = []
    for d in deliveries:
        if d.event.case_id is not None:
            if d.event.case_id in heads:
                continue
            heads[d.event.case_id] = d
        if (d.next_attempt_at or T0) <= at(60):
            expected.append(d.event.seq)
    due = await repo.due_deliveries(at(60), 10_000)
    assert [d.event.seq for d in due] == expected
    assert len(expected) > 10
    assert [d.event.seq for d in await repo.due_deliveries(at(60), 5)] == expected[:5]
    later = [d.event.seq for d in await repo.due_deliveries(at(700), 10_000)]
    caseless = [d.event.seq for d in deliveries if d.event.case_id is None]
    assert later == sorted([d.event.seq or 0 for d in heads.values()] + [s or 0 for s in caseless])


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_seq_follows_commit_order_under_concurrent_appends(repo: SqlRepository) -> None:
    """80 transactions append events at once and each lingers before it commits; a reader polling
    events_after with its cursor sees every event exactly once, in seq order (no later seq ever commits
    below a cursor it has passed)."""
    written: list[str] = []

    async def writer(i: int) -> None:
        batch = [finished(f"C-{i % 7}", name=f"w{i}-{j}") for j in range(1 + i % 3)]
        async with repo.engine.begin() as conn:
            await conn.execute(sa.select(1))
            await append_events(conn, batch)
            await asyncio.sleep(random.random() / 20)  # a slow commit: the window a reader could slip into
        written.extend(e.id for e in batch)

    seen: list[Event] = []
    done = asyncio.Event()

    polls = SqlRepository(repo.url)  # a reader with connections of its own, polling all the time

    async def reader() -> None:
        cursor = 0
        while True:
            finished_writing = done.is_set()
            page = await polls.events_after(cursor, 7)
            seen.extend(page)
            if page:
                cursor = page[-1].seq or cursor
            elif finished_writing:
                return

    polling = asyncio.ensure_future(reader())
    await asyncio.gather(*(writer(i) for i in range(80)))
    done.set()
    await asyncio.wait_for(polling, 60)
    await polls.close()
    assert sorted(e.id for e in seen) == sorted(written)
    assert len({e.id for e in seen}) == len(seen)
    assert [e.seq for e in seen] == sorted(e.seq or 0 for e in seen)
