from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eftgw.model import SYSTEM
from tests.support import RunningGateway, running_gateway

SELF_PARAMETRISED = ("tests/storage/", "tests/metadata/")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The store and repository suites run every backend themselves: once per test run is enough."""
    for item in items:
        if any(part in item.nodeid for part in SELF_PARAMETRISED):
            item.add_marker(pytest.mark.once)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """An in-process gateway on a loopback TLS socket, with case ``C-1`` open."""
    async with running_gateway(tmp_path / "gw") as running:
        await running.gateway.cases.open(SYSTEM, "C-1")
        yield running
