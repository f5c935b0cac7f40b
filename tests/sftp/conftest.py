"""Fixtures for the SFTP tests (helpers live in ``sftp_support``): gateways, client keys, dropping proxies."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sftp_support import ClientKey, DroppingProxy, GatewayThread


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayThread]]:
    """Start gateways with options (``failure_delay``, ``check_interval``, ``defender_options``, extra
    ``settings``, ...)."""
    started: list[GatewayThread] = []

    def start(**options: Any) -> GatewayThread:
        node = GatewayThread(tmp_path / f"data{len(started)}", **options).start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayThread]) -> GatewayThread:
    """One gateway node with SFTP on a loopback port."""
    return gateway_factory()


@pytest.fixture
def client_key(tmp_path: Path) -> ClientKey:
    """An Ed25519 key pair made with ssh-keygen, for public-key logins."""
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return ClientKey(path, path.with_suffix(".pub").read_text().strip())


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., DroppingProxy]]:
    proxies: list[DroppingProxy] = []

    def make(target_port: int, drop_after: int | None = None) -> DroppingProxy:
        proxy = DroppingProxy(target_port, drop_after)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
