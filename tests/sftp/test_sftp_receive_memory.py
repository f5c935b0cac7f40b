"""The node-wide bound on what SFTP clients sent and the gateway has not yet processed.

The bytes held are counted here independently of the mechanism, from asyncssh's own buffers (the sessions'
and channels' receive buffers) and the connections' receive queues, on the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sftp_support import ClientKey, GatewayThread, openssh_sftp, sha256, wait_until

from eftgw.sftp import SftpService
from eftgw.sftp import asyncssh_compat as compat

# Storage is stalled by a gate in front of ``uploads.append``, above any store, and the bound is on asyncssh's
# buffers: the backend plays no part. (On S3 each run only pushed its 320 MiB through RGW, 3x the time.) The
# SFTP share of an S3 upload's memory is proven on the real S3 server by test_sftp_s3_memory.py.
pytestmark = pytest.mark.once

MIB = 1024 * 1024
UPLOADS = 5
# Large next to RAMPED: storage stalls once every client sent RAMPED, and a client that ramped up first must
# not have sent its whole file by then (with 20 MiB one did, twice, on a loaded machine). A stall per upload
# cannot replace this: the stalled ones would take the node's shared write and receive memory, and the others
# could then never ramp up.
SIZE = 64 * MIB
RAMPED = 4 * MIB  # written by each client before storage stalls
RECEIVE_MEMORY = 4 * MIB
# What a connection may still take in after it was paused: the rest of one socket read (SOCKET_READ, 256 KiB)
# and of a packet begun in it (at most 256 KiB).
SLACK_PER_CONNECTION = compat.SOCKET_READ + 256 * 1024


def received_not_processed(service: SftpService) -> int:
    """Bytes of SFTP connections read from their sockets and not yet processed by the SFTP handlers."""
    total = 0
    for conn in list(service.connections):
        conn_any: Any = conn
        queue = conn_any.__dict__.get("_eftgw_received")
        total += (queue.size if queue is not None else 0) + len(conn_any._inpbuf)
        for chan in list(conn_any._channels.values()):
            total += sum(len(data) for data, _ in chan._recv_buf)
            total += int(getattr(chan._session, "_recv_buf_len", 0) or 0)
    return total


class StalledUploads:
    """``UPLOADS`` OpenSSH ``put``s (one per case) to a gateway whose storage can be stalled: while the gate
    is shut, no part of any upload is stored, so the node's write buffer fills and the sessions stop
    processing what their clients send."""

    def __init__(self, gateway: GatewayThread, tmp_path: Path, client_key: ClientKey) -> None:
        self.gateway = gateway
        self.service = gateway.sftp
        self.gate = gateway.call(_open_gate())
        uploads = self.service.context.uploads
        store = uploads.append

        async def gated_append(*args: Any, **kwargs: Any) -> Any:
            await self.gate.wait()
            return await store(*args, **kwargs)

        uploads.append = gated_append  # type: ignore[method-assign]
        self.bodies = [os.urandom(SIZE) for _ in range(UPLOADS)]
        self.accounts = []
        for i, body in enumerate(self.bodies):
            (tmp_path / f"part-{i}.bin").write_bytes(body)
            self.accounts.append(gateway.account(case_id=f"CASE-{i}", keys=[client_key.public_line]))
        self.tmp_path = tmp_path
        self.client_key = client_key

    def start(self, pool: ThreadPoolExecutor) -> list[Future[subprocess.CompletedProcess[str]]]:
        """Start the uploads; return once every client is sending at full pipeline (its ``sftp`` sends more
        requests as answers come back)."""
        runs = [
            pool.submit(
                openssh_sftp,
                self.gateway,
                account,
                f"put part-{i}.bin\n",
                cwd=self.tmp_path,
                key=self.client_key,
                timeout=300,
            )
            for i, account in enumerate(self.accounts)
        ]

        async def ramped() -> int:
            writers = list(self.service.context.writers._writers.values())
            return sum(1 for w in writers if w.end >= RAMPED)

        wait_until(lambda: self.gateway.call(ramped()) == UPLOADS, timeout=120)
        return runs

    def stall(self) -> None:
        self.gateway.loop.call_soon_threadsafe(self.gate.clear)

    def resume(self) -> None:
        self.gateway.loop.call_soon_threadsafe(self.gate.set)

    def check_finished(self, runs: list[Future[subprocess.CompletedProcess[str]]]) -> None:
        """Every upload finished, each a case file with its SHA-256; nothing is counted or paused any more."""
        for run in runs:
            done = run.result(timeout=300)
            assert done.returncode == 0, done.stderr
        for i, body in enumerate(self.bodies):
            record = self.gateway.file_named(f"part-{i}.bin", case_id=f"CASE-{i}")
            assert record.sha256 == sha256(body)
        flow = self.service.receive_memory

        async def counted() -> int:
            await asyncio.sleep(0)
            return flow.held

        wait_until(lambda: self.gateway.call(counted()) == 0 and flow.paused == 0)


def test_sessions_stalled_by_storage_hold_at_most_the_receive_memory_and_then_all_finish(
    gateway_factory: Any, tmp_path: Path, client_key: ClientKey
) -> None:
    """Five OpenSSH ``put``s under way whose writes then cannot be stored (storage stalls, the node's write
    buffer fills) stop being read: the gateway holds at most ``EFTGW_SFTP_RECEIVE_MEMORY`` (plus one socket
    read per connection) of what they sent, not two SSH windows (16 MiB) each, the connections are paused
    rather than cut, and once storage moves again every upload finishes with its SHA-256."""
    gateway: GatewayThread = gateway_factory(
        settings={"sftp_receive_memory": RECEIVE_MEMORY, "sftp_write_memory": MIB}
    )
    service = gateway.sftp
    uploads = StalledUploads(gateway, tmp_path, client_key)

    async def sample() -> int:
        return received_not_processed(service)

    bound = RECEIVE_MEMORY + UPLOADS * SLACK_PER_CONNECTION
    with ThreadPoolExecutor(UPLOADS) as pool:
        runs = uploads.start(pool)
        try:
            # Storage stalls. Sample until the clients have sent all they can (nothing moves for 3 s) or
            # the bound is broken.
            uploads.stall()
            peak = last = still = 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and peak <= bound and still < 30:
                now = gateway.call(sample())
                peak = max(peak, now)
                still = still + 1 if now == last else 0
                last = now
                time.sleep(0.1)
            assert peak <= bound, f"{peak} bytes held (bound {bound})"
            assert service.receive_memory.peak <= bound
            assert service.receive_memory.paused >= 1
            assert not any(run.done() for run in runs)  # paused, not cut
        finally:
            uploads.resume()
        uploads.check_finished(runs)


def test_a_connection_paused_longer_than_the_keepalive_allows_is_not_dropped(
    gateway_factory: Any, tmp_path: Path, client_key: ClientKey
) -> None:
    """A connection whose socket the gateway stops reading cannot answer the gateway's keepalive requests
    (the answers wait unread): with a keepalive of 0.5 s (dropped after 2 s without an answer), uploads
    paused for 5 s are not dropped as unresponsive, and all finish once storage moves again."""
    gateway: GatewayThread = gateway_factory(
        settings={"sftp_receive_memory": RECEIVE_MEMORY, "sftp_write_memory": MIB}, keepalive_interval=0.5
    )
    flow = gateway.sftp.receive_memory
    uploads = StalledUploads(gateway, tmp_path, client_key)
    with ThreadPoolExecutor(UPLOADS) as pool:
        runs = uploads.start(pool)
        try:
            uploads.stall()
            wait_until(lambda: flow.paused >= 1, timeout=60)
            time.sleep(5)
            assert flow.paused >= 1
            assert not any(run.done() for run in runs)
        finally:
            uploads.resume()
        uploads.check_finished(runs)


async def _open_gate() -> asyncio.Event:
    gate = asyncio.Event()
    gate.set()
    return gate
