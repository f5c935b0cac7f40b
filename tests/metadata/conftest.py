"""Fixtures for the repository tests: every test runs once on SQLite and once on PostgreSQL.

PostgreSQL is the real server that ``scripts/postgres start`` runs on loopback, found through
``EFTGW_TEST_DATABASE_URL`` (``postgresql://user@127.0.0.1:55432/eftgw``). Each test gets a database of its
own, created from that server and dropped afterwards. A missing server fails the tests; it never skips them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from eftgw.metadata import SqlRepository
from tests.pg import throwaway_databases

DIALECTS = ["sqlite", "postgresql"]


@pytest.fixture
async def fresh_postgres() -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Create empty PostgreSQL databases on demand (URLs returned); they are dropped after the test."""
    async with throwaway_databases() as make:
        yield make


@pytest.fixture(params=DIALECTS)
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, fresh_postgres: Callable[[], Awaitable[str]]
) -> str:
    """The URL of an empty database of the dialect under test."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'eftgw.sqlite3'}"
    return await fresh_postgres()


@pytest.fixture
async def repo(database_url: str) -> AsyncIterator[SqlRepository]:
    """A migrated repository on an empty database of the dialect under test."""
    repository = SqlRepository(database_url)
    await repository.migrate()
    yield repository
    await repository.close()
