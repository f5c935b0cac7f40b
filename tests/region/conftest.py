"""One region per session: the wheel is built and installed once, then HAProxy and two nodes start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.region.region import Region, build_wheel, install_wheel, start_region, stop_region


@pytest.fixture(scope="session")
def installed_eftgw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``eftgw`` of a fresh venv with the wheel of this checkout installed (outside the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(base / "dist")
    return install_wheel(wheel, base / "venv")


@pytest.fixture(scope="session")
def region(tmp_path_factory: pytest.TempPathFactory, installed_eftgw: Path) -> Iterator[Region]:
    """HAProxy with deploy/haproxy.cfg in front of two nodes (PostgreSQL and S3 shared); case C-1 open."""
    started = start_region(tmp_path_factory.mktemp("region"), installed_eftgw)
    try:
        started.nodes["gateway1"].cli("case", "open", "C-1")
        yield started
    finally:
        stop_region(started)


@pytest.fixture
def both_up(region: Region) -> Region:
    """The region with both nodes running and marked up by HAProxy (a test before may have killed one)."""
    for name, node in region.nodes.items():
        if not node.running:
            node.start()
        region.wait_state(name, "UP")
    return region
