"""Upload locks and leader election across nodes: each "node" is its own engine on the same real database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from eftgw.errors import UploadLocked
from eftgw.metadata import SqlRepository
from eftgw.metadata.election import elect
from eftgw.metadata.leases import Leases
from eftgw.metadata.locks import SqlUploadLocks, upload_lease_name
from eftgw.metadata.schema import leases
from tests.metadata.test_repository import make_upload


@pytest.fixture
async def nodes(database_url: str) -> AsyncIterator[Callable[[], SqlRepository]]:
    """Make repositories on one migrated database, each with its own engine (one per gateway node)."""
    made: list[SqlRepository] = []

    def make() -> SqlRepository:
        made.append(SqlRepository(database_url))
        return made[-1]

    await make().migrate()
    yield make
    for repo in made:
        await repo.close()


@pytest.fixture
async def make_locks(nodes: Callable[[], SqlRepository]) -> AsyncIterator[Callable[..., SqlUploadLocks]]:
    """Make upload locks; they are closed before their repositories (``nodes`` ends after this fixture), so
    no lease release or renewal still under way holds a connection of an engine being disposed."""
    made: list[SqlUploadLocks] = []

    def make(repo: SqlRepository, **options: float) -> SqlUploadLocks:
        made.append(SqlUploadLocks(repo, **options))
        return made[-1]

    yield make
    for held in made:
        await held.close()


async def test_two_nodes_never_hold_one_upload_at_once(
    nodes: Callable[[], SqlRepository], make_locks: Callable[..., SqlUploadLocks]
) -> None:
    """Many requests on two nodes for one upload: at most one holds it at any time, fences only grow."""
    repo = nodes()
    await repo.add_upload(make_upload("u1"))
    node_a, node_b = make_locks(repo, heartbeat=0.2, ttl=3), make_locks(nodes(), heartbeat=0.2, ttl=3)
    inside = 0
    fences: list[int] = []

    async def request(locks: SqlUploadLocks) -> None:
        nonlocal inside
        try:
            async with locks.hold("u1") as lease:
                inside += 1
                assert inside == 1
                fences.append(lease.fence)
                await asyncio.sleep(0.05)
                assert lease.may_commit()
                inside -= 1
        except UploadLocked:
            pass

    async with asyncio.timeout(60):
        await asyncio.gather(*(request(node_a if i % 2 else node_b) for i in range(16)))
    assert len(fences) >= 2 and fences == sorted(fences) and len(set(fences)) == len(fences)


async def test_a_newer_request_on_another_node_interrupts_the_holder(
    nodes: Callable[[], SqlRepository],
    make_locks: Callable[..., SqlUploadLocks],
) -> None:
    """The holder on node A is told to let go within a heartbeat; node B then holds with a higher fence."""
    repo = nodes()
    await repo.add_upload(make_upload("u1"))
    node_a, node_b = make_locks(repo, heartbeat=0.2, ttl=3), make_locks(nodes(), heartbeat=0.2, ttl=3)
    async with asyncio.timeout(30):
        async with node_a.hold("u1") as first:
            newer = asyncio.create_task(_hold_once(node_b, "u1"))
            await asyncio.wait_for(first.interrupted.wait(), 3)
            assert not first.may_continue() and first.may_commit()  # asked to let go, but still the holder
            assert not newer.done()
        second_fence = await newer
    assert second_fence == first.fence + 1


async def _hold_once(locks: SqlUploadLocks, upload_id: str) -> int:
    async with locks.hold(upload_id) as lease:
        assert lease.fence is not None
        return lease.fence


async def test_a_dead_holder_is_taken_over_once_its_lease_expires(
    nodes: Callable[[], SqlRepository], make_locks: Callable[..., SqlUploadLocks]
) -> None:
    """A lease nobody renews (its node died) is taken over after the lease time, not before."""
    repo = nodes()
    dead = Leases(repo.engine, ttl=1.5)
    assert await dead.acquire(upload_lease_name("u1"), "dead-node", interrupt=False) == 1
    node_b = make_locks(nodes(), heartbeat=0.3, ttl=1.5, takeover_timeout=10)
    started = time.monotonic()
    async with asyncio.timeout(30):
        fence = await _hold_once(node_b, "u1")
    assert fence == 2 and time.monotonic() - started >= 1.0


async def test_a_holder_gives_up_when_it_cannot_renew(
    nodes: Callable[[], SqlRepository],
    monkeypatch: pytest.MonkeyPatch,
    make_locks: Callable[..., SqlUploadLocks],
) -> None:
    """Without renewals (database unreachable), a holder stops holding after half the lease time."""
    node_a = make_locks(nodes(), heartbeat=0.2, ttl=1.2)

    async def unreachable(*_args: object, **_kwargs: object) -> list[object]:
        raise ConnectionError("database unreachable")

    async with asyncio.timeout(30), node_a.hold("u1") as lease:
        monkeypatch.setattr(node_a.leases, "renew", unreachable)
        await asyncio.wait_for(lease.interrupted.wait(), 3)
        assert not lease.may_commit()


async def test_a_stale_holder_cannot_record_progress(
    nodes: Callable[[], SqlRepository], make_locks: Callable[..., SqlUploadLocks]
) -> None:
    """A holder whose lease was taken over is fenced: its offset is refused, the new holder's is recorded."""
    repo = nodes()
    upload = make_upload()
    await repo.add_upload(upload)
    stale = Leases(repo.engine, ttl=1.0)
    old_fence = await stale.acquire(upload_lease_name("u1"), "paused-node", interrupt=False)
    assert old_fence == 1
    node_b = make_locks(nodes(), heartbeat=0.2, ttl=3, takeover_timeout=10)
    async with asyncio.timeout(30), node_b.hold("u1") as lease:
        upload.offset = 100
        await repo.save_progress(upload, fence=lease.fence)
        upload.offset = 999
        with pytest.raises(UploadLocked):
            await repo.save_progress(upload, fence=old_fence)
    stored = await repo.get_upload("u1")
    assert stored is not None and stored.offset == 100


async def test_the_lease_of_a_deleted_upload_is_forgotten(
    nodes: Callable[[], SqlRepository], make_locks: Callable[..., SqlUploadLocks]
) -> None:
    """Releasing the lock of an upload that no longer exists leaves no lease row behind."""
    repo = nodes()
    await repo.add_upload(make_upload("u1"))
    locks = make_locks(repo, heartbeat=0.2, ttl=3)
    async with asyncio.timeout(30):
        await _hold_once(locks, "u1")
        async with locks.hold("u1"):
            await repo.delete_upload("u1")
    async with repo.engine.connect() as conn:
        names = [r.name for r in await conn.execute(leases.select())]
    assert names == []


async def _until(condition: Callable[[], bool], seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def test_one_leader_per_job_and_a_successor_when_it_leaves(nodes: Callable[[], SqlRepository]) -> None:
    """Of two nodes campaigning for a job exactly one leads; when it shuts down, the other takes over."""
    async with asyncio.timeout(30):
        first_election = elect(nodes(), "retention", ttl=1.2)
        first = await first_election.__aenter__()
        async with elect(nodes(), "retention", ttl=1.2) as second:
            assert first.is_leader and not second.is_leader
            await asyncio.sleep(1.5)  # longer than the lease: renewals keep the leader
            assert first.is_leader and not second.is_leader
            fence = first.fence
            assert fence is not None
            await first_election.__aexit__(None, None, None)
            assert await _until(lambda: second.is_leader, 3)
            assert second.fence == fence + 1


async def test_a_leader_that_stops_renewing_is_replaced(
    nodes: Callable[[], SqlRepository], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader cut off from the database stops leading before its lease expires; then another node leads."""
    async with asyncio.timeout(30), elect(nodes(), "retention", ttl=1.2) as first:
        renew = Leases.renew

        async def cut_off(self: Leases, holder: str, name: str | None = None) -> list[object]:
            if holder == first.holder:
                raise ConnectionError("database unreachable")
            return await renew(self, holder, name)  # type: ignore[return-value]

        monkeypatch.setattr(Leases, "renew", cut_off)
        async with elect(nodes(), "retention", ttl=1.2) as second:
            assert first.is_leader and not second.is_leader
            assert await _until(lambda: not first.is_leader, 2)
            assert not second.is_leader  # the lease has not expired yet: nobody leads for a moment
            assert await _until(lambda: second.is_leader, 3)
            assert not first.is_leader


async def test_a_lease_taken_while_a_renewal_is_in_flight_is_kept(
    nodes: Callable[[], SqlRepository], make_locks: Callable[..., SqlUploadLocks]
) -> None:
    """A renewal that ran its UPDATE before a lease was taken does not list that lease; when its answer
    arrives, the new lease is not taken for lost (it was: a request then stopped with 423 under load)."""
    repo = nodes()
    await repo.add_upload(make_upload("u1"))
    await repo.add_upload(make_upload("u2"))
    locks = make_locks(repo, heartbeat=0.05, ttl=3)
    renew = locks.leases.renew
    answered, release, renewed_since = asyncio.Event(), asyncio.Event(), asyncio.Event()
    renewals_since_release = 0

    async def delayed_renew(holder: str, name: str | None = None) -> list:
        nonlocal renewals_since_release
        if release.is_set():
            renewals_since_release += 1
            if renewals_since_release == 2:  # the delayed answer and the next one were both handled
                renewed_since.set()
        held = await renew(holder, name)
        answered.set()
        await release.wait()  # the answer travels slowly back to this node
        return held

    locks.leases.renew = delayed_renew  # type: ignore[method-assign]
    async with asyncio.timeout(30):
        async with locks.hold("u1"):
            await answered.wait()
            async with locks.hold("u2") as lease:
                release.set()
                await renewed_since.wait()
                assert lease.may_continue()
        assert locks._beat is not None
        await locks._beat  # it ends once nothing is held: no renewal runs on into the database's teardown


async def test_close_stops_the_heartbeat_so_no_connection_outlives_the_engine(
    nodes: Callable[[], SqlRepository],
    make_locks: Callable[..., SqlUploadLocks],
) -> None:
    """Closing the locks while a lease is held and a renewal is in the database stops the heartbeat and
    returns its connection: none is checked out when the engine is disposed (an orphaned asyncpg connection
    was found by the garbage collector later, failing an unrelated test with an unclosed-socket warning)."""
    repo = nodes()
    await repo.add_upload(make_upload("u1"))
    locks = make_locks(repo, heartbeat=0.05, ttl=3)
    renew = locks.leases.renew
    in_database, never = asyncio.Event(), asyncio.Event()

    async def slow_renew(holder: str, name: str | None = None) -> list:
        async with repo.engine.connect() as conn:  # holds a connection like a renewal on a slow database
            in_database.set()
            await never.wait()
            await conn.exec_driver_sql("SELECT 1")
        return await renew(holder, name)

    locks.leases.renew = slow_renew  # type: ignore[method-assign]
    async with asyncio.timeout(30):
        async with locks.hold("u1"):
            await in_database.wait()
            assert repo.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
            await locks.close()
            assert locks._beat is None
            assert repo.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
