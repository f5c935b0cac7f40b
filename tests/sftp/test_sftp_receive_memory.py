"""The node-wide bound on what SFTP clients sent and the gateway has not yet processed.

The bytes held are counted here independently of the mechanism, from asyncssh's own buffers (the sessions'
and channels' receive buffers) and the connections' receive queues, on the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sftp_support import ClientKey, GatewayThread, openssh_sftp, sha256, wait_until

from eftgw.sftp import SftpService

MIB = 1024 * 1024
UPLOADS = 5
SIZE = 20 * MIB
RAMPED = 4 * MIB  # written by each client before storage stalls
RECEIVE_MEMORY = 4 * MIB
# What a connection may still take in after it was paused: the rest of one socket read (256 KiB) and of a
# packet begun in it (at most 256 KiB).
SLACK_PER_CONNECTION = 512 * 1024


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
    uploads = service.context.uploads
    store = uploads.append
    gate = gateway.call(_open_gate())

    async def gated_append(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await store(*args, **kwargs)

    uploads.append = gated_append  # type: ignore[method-assign]

    bodies = [os.urandom(SIZE) for _ in range(UPLOADS)]
    accounts = []
    for i, body in enumerate(bodies):
        (tmp_path / f"part-{i}.bin").write_bytes(body)
        accounts.append(gateway.account(case_id=f"CASE-{i}", keys=[client_key.public_line]))

    async def sample() -> tuple[int, int]:
        writers = list(service.context.writers._writers.values())
        started = sum(1 for w in writers if w.end >= RAMPED)
        return received_not_processed(service), started

    bound = RECEIVE_MEMORY + UPLOADS * SLACK_PER_CONNECTION
    with ThreadPoolExecutor(UPLOADS) as pool:
        runs = [
            pool.submit(
                openssh_sftp,
                gateway,
                account,
                f"put part-{i}.bin\n",
                cwd=tmp_path,
                key=client_key,
                timeout=300,
            )
            for i, account in enumerate(accounts)
        ]
        try:
            # Every client is sending at full pipeline (its sftp sends more requests as answers come back)...
            wait_until(lambda: gateway.call(sample())[1] == UPLOADS, timeout=120)
            # ... when storage stops taking parts. Sample until the clients have sent all they can (nothing
            # moves for 3 s) or the bound is broken.
            gateway.loop.call_soon_threadsafe(gate.clear)
            peak = last = still = 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and peak <= bound and still < 30:
                now, _ = gateway.call(sample())
                peak = max(peak, now)
                still = still + 1 if now == last else 0
                last = now
                time.sleep(0.1)
            assert peak <= bound, f"{peak} bytes held (bound {bound})"
            assert service.receive_memory.peak <= bound
            assert service.receive_memory.paused >= 1
            assert not any(run.done() for run in runs)  # paused, not cut
        finally:
            gateway.loop.call_soon_threadsafe(gate.set)
        for run in runs:
            done = run.result(timeout=300)
            assert done.returncode == 0, done.stderr

    for i, body in enumerate(bodies):
        assert gateway.file_named(f"part-{i}.bin", case_id=f"CASE-{i}").sha256 == sha256(body)

    async def counted() -> int:
        await asyncio.sleep(0)
        return service.receive_memory.held

    wait_until(lambda: gateway.call(counted()) == 0 and service.receive_memory.paused == 0)


async def _open_gate() -> asyncio.Event:
    gate = asyncio.Event()
    gate.set()
    return gate
