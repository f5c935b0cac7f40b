from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for this test only (the suite runs as root; a failing mount fails the test)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
