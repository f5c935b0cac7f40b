"""Fixtures for the repository tests: every test runs once on SQLite and once on PostgreSQL.

PostgreSQL is the real server that ``scripts/postgres start`` runs on loopback, found through
``EFTGW_TEST_DATABASE_URL`` (``postgresql://user@127.0.0.1:55432/eftgw``). Each test gets a database of its
own, created from that server and dropped afterwards. A missing server fails the tests; it never skips them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from eftgw.metadata import SqlRepository

DIALECTS = ["sqlite", "postgresql"]


def postgres_url() -> str:
    url = os.environ.get("EFTGW_TEST_DATABASE_URL")
    if not url:
        pytest.fail(
            'EFTGW_TEST_DATABASE_URL is not set: start PostgreSQL with `eval "$(scripts/postgres start)"`'
        )
    return url


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def fresh_postgres() -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Create empty PostgreSQL databases on demand (URLs returned); they are dropped after the test."""
    base = postgres_url()
    server, _, _db = base.rpartition("/")
    made: list[str] = []

    async def make() -> str:
        name = "eftgw_t_" + secrets.token_hex(6)
        await _admin(base, f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"{server}/{name}"

    yield make
    for name in made:
        await _admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
