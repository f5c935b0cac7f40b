from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eftgw.model import SYSTEM
from tests.support import RunningGateway, running_gateway


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """An in-process gateway on a loopback TLS socket, with case ``C-1`` open."""
    async with running_gateway(tmp_path / "gw") as running:
        await running.gateway.cases.open(SYSTEM, "C-1")
        yield running
