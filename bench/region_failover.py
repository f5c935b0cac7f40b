"""Benchmark: the production region through HAProxy (``tests/region``: wheel install, two nodes, PROXY v2).

Measures, through the balancer only:

1. **Alternating nodes vs one node**: a 1 GiB tus upload in 64 MiB PATCHes, each on a new connection
   (HAProxy's ``leastconn`` spreads them over both nodes; the nodes' JSON logs tell which took each PATCH)
   against the same upload with every PATCH on one kept-alive connection (one node). Reports MB/s of each,
   their ratio and how many times the serving node changed.
2. **Failover**: during a PATCH, the node serving it is SIGKILLed; reports the seconds from the kill until a
   HEAD through the balancer answers (another node serves) and until the next 8 MiB PATCH is acknowledged
   (the dead node's upload lease has expired, 10 s, and the other node took the upload over).

Needs what the region tests need: ``EFTGW_TEST_DATABASE_URL`` and ``EFTGW_TEST_S3_*`` (PostgreSQL and S3,
as ``scripts/test`` starts them), Debian's HAProxy, and a built web client (``scripts/build-web-client``).

    .venv/bin/python bench/region_failover.py [--size-mib 1024] [--piece-mib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.region.region import Region, build_wheel, install_wheel, start_region, stop_region  # noqa: E402
from tests.support import client_ssl, tus_headers  # noqa: E402

MiB = 1024 * 1024
OCTETS = "application/offset+octet-stream"


def pieces(data: memoryview, start: int, end: int) -> AsyncIterator[bytes]:
    async def body() -> AsyncIterator[bytes]:
        for at in range(start, end, MiB):
            yield bytes(data[at : min(at + MiB, end)])

    return body()


async def create(region: Region, session: aiohttp.ClientSession, token: str, length: int, name: str) -> str:
    metadata = "filename " + base64.b64encode(name.encode()).decode()
    headers = tus_headers(token, Upload_Length=str(length), Upload_Metadata=metadata)
    async with session.post(f"{region.url}/api/v1/cases/C-1/uploads", headers=headers) as r:
        assert r.status == 201, await r.text()
        return r.headers["Location"]


def serving_sequence(region: Region, upload_id: str) -> list[str]:
    """Which node took each PATCH of the upload, in time order (from the nodes' JSON logs)."""
    starts = []
    for name, node in region.nodes.items():
        for line in node.lines():
            if line["upload"] == upload_id and line["event"].endswith(" started"):
                starts.append((line["time"], name))
    return [name for _, name in sorted(starts)]


async def upload(region: Region, token: str, data: memoryview, piece: int, *, fresh: bool) -> dict[str, Any]:
    """One upload in ``piece``-sized PATCHes: each on a new connection (``fresh``) or all on one."""
    connector = aiohttp.TCPConnector(ssl=client_ssl(), force_close=fresh, limit=1)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        name = f"bench-{'alternating' if fresh else 'one-node'}.bin"
        location = await create(region, session, token, len(data), name)
        started = time.monotonic()
        for offset in range(0, len(data), piece):
            end = min(offset + piece, len(data))
            headers = tus_headers(token, Upload_Offset=str(offset), Content_Type=OCTETS)
            async with session.patch(location, data=pieces(data, offset, end), headers=headers) as r:
                assert r.status == 204, await r.text()
        seconds = time.monotonic() - started
    sequence = serving_sequence(region, location.rstrip("/").rsplit("/", 1)[1])
    switches = sum(1 for a, b in itertools.pairwise(sequence) if a != b)
    return {
        "mb_per_s": round(len(data) / seconds / 1e6, 1),
        "seconds": round(seconds, 2),
        "switches": switches,
        "patches_per_node": {n: sequence.count(n) for n in region.nodes},
        "name": name,
    }


async def failover(region: Region, token: str, data: memoryview) -> dict[str, float]:
    """Kill the node serving a PATCH; time until HEAD answers and until the next PATCH is acknowledged."""
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl()), timeout=timeout) as s:
        location = await create(region, s, token, len(data), "bench-failover.bin")
    upload_id = location.rstrip("/").rsplit("/", 1)[1]
    sent = [0]

    async def body() -> AsyncIterator[bytes]:
        for at in range(0, len(data), MiB):
            sent[0] += MiB
            yield bytes(data[at : at + MiB])

    async def patch() -> None:
        connector = aiohttp.TCPConnector(ssl=client_ssl(), force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
            headers = tus_headers(token, Upload_Offset="0", Content_Type=OCTETS)
            async with s.patch(location, data=body(), headers=headers) as r:
                await r.read()

    running = asyncio.ensure_future(patch())
    while sent[0] < 64 * MiB:  # noqa: ASYNC110 - a byte count, polled
        await asyncio.sleep(0.05)
    (serving,) = serving_sequence(region, upload_id)[-1:]
    killed_at = time.monotonic()
    region.nodes[serving].kill9()
    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
        await running
    offset = None
    while offset is None:
        try:
            connector = aiohttp.TCPConnector(ssl=client_ssl(), force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as s,
                s.head(location, headers=tus_headers(token)) as r,
            ):
                if r.status == 200:
                    offset = int(r.headers["Upload-Offset"])
        except (aiohttp.ClientError, ConnectionError):
            pass  # no node answered this time; ask again
        if offset is None:
            await asyncio.sleep(0.1)
    head_at = time.monotonic()
    connector = aiohttp.TCPConnector(ssl=client_ssl(), force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        headers = tus_headers(token, Upload_Offset=str(offset), Content_Type=OCTETS)
        async with s.patch(location, data=pieces(data, offset, offset + 8 * MiB), headers=headers) as r:
            assert r.status == 204, await r.text()
    acked_at = time.monotonic()
    await asyncio.to_thread(region.restart, serving)
    return {
        "head_answered_s": round(head_at - killed_at, 2),
        "next_patch_acknowledged_s": round(acked_at - killed_at, 2),
        "durable_offset_mib": round(offset / MiB, 1),
    }


async def files(region: Region, token: str) -> dict[str, str]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl())) as s,
        s.get(f"{region.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return {f["name"]: f["sha256"] for f in await r.json()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--piece-mib", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eftgw-region-bench-") as tmp:
        base = Path(tmp)
        print("building and installing the wheel ...", file=sys.stderr)
        eftgw = install_wheel(build_wheel(base / "dist"), base / "venv")
        region = start_region(base / "region", eftgw)
        try:
            region.nodes["gateway1"].cli("case", "open", "C-1")
            token = (
                region.nodes["gateway1"].cli("token", "C-1", "--role", "customer", "--user", "bench").strip()
            )
            data = memoryview(os.urandom(args.size_mib * MiB))
            digest = hashlib.sha256(data).hexdigest()
            piece = args.piece_mib * MiB
            print("uploading: one node ...", file=sys.stderr)
            one = await upload(region, token, data, piece, fresh=False)
            print("uploading: alternating nodes ...", file=sys.stderr)
            alternating = await upload(region, token, data, piece, fresh=True)
            stored = await files(region, token)
            assert stored[one["name"]] == stored[alternating["name"]] == digest, "a stored SHA-256 differs"
            print("failover ...", file=sys.stderr)
            failed_over = await failover(region, token, memoryview(data[: 256 * MiB]))
        finally:
            stop_region(region)
    result = {
        "size_mib": args.size_mib,
        "piece_mib": args.piece_mib,
        "one_node": one,
        "alternating": alternating,
        "ratio_alternating_to_one_node": round(alternating["mb_per_s"] / one["mb_per_s"], 2),
        "failover": failed_over,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
