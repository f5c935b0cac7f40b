"""The real PostgreSQL server of the test run (``scripts/postgres start``), and throwaway databases on it."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest


def postgres_url() -> str:
    """``EFTGW_TEST_DATABASE_URL``; the test fails (never skips) when it is not set."""
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


@contextlib.asynccontextmanager
async def throwaway_databases() -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Create empty databases on demand (their URLs are returned); drop them all at the end."""
    base = postgres_url()
    server = base.rpartition("/")[0]
    made: list[str] = []

    async def make() -> str:
        name = "eftgw_t_" + secrets.token_hex(6)
        await _admin(base, f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"{server}/{name}"

    try:
        yield make
    finally:
        for name in made:
            await _admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
