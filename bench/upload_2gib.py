"""Benchmark: one 2 GiB tus upload streamed from a generator to a real ``eftgw serve`` process.

Measures single-stream throughput (MB/s, 10^6 bytes per second) and the gateway's peak RSS, sampled every
50 ms from /proc, so it shows that memory does not grow with the file's size. The gateway runs on the
embedded default (SQLite + local directory) over HTTPS on loopback, or on whatever EFTGW_* settings say.

    .venv/bin/python bench/upload_2gib.py [--size-mib 2048] [--patch-mib 0] [--keep]

``--patch-mib 0`` sends the whole file in one PATCH (single stream); a positive value splits it into PATCHes
of that size, as tus clients with a chunk size do.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import GatewayProcess, http_session, tus_headers

BLOCK = 1024 * 1024


async def sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], proc.memory_info().rss)
        except psutil.NoSuchProcess:
            return
        await asyncio.sleep(0.05)


async def run(size_mib: int, patch_mib: int, data_dir: Path) -> dict[str, object]:
    block = os.urandom(BLOCK)
    total = size_mib * BLOCK
    expected = hashlib.sha256()
    for i in range(size_mib):
        expected.update(block[:8] + i.to_bytes(8, "big") + block[16:])
    node = GatewayProcess(data_dir).start()
    try:
        node.cli("case", "open", "BENCH-1")
        token = node.token("BENCH-1")
        assert node.proc is not None
        gateway_proc = psutil.Process(node.proc.pid)
        idle_rss = gateway_proc.memory_info().rss
        written_before = gateway_proc.io_counters().write_bytes
        peak, stop = [idle_rss], asyncio.Event()
        sampler = asyncio.create_task(sample_rss(node.proc.pid, peak, stop))
        async with http_session() as s:
            async with s.post(
                f"{node.url}/api/v1/cases/BENCH-1/uploads",
                headers=tus_headers(token, Upload_Length=str(total), Upload_Metadata="filename YmVuY2guYmlu"),
            ) as resp:
                url = resp.headers["Location"]

            def blocks(first: int, count: int):
                async def gen():
                    for i in range(first, first + count):
                        yield block[:8] + i.to_bytes(8, "big") + block[16:]

                return gen()

            started = time.perf_counter()
            step = patch_mib or size_mib
            offset_mib = 0
            while offset_mib < size_mib:
                count = min(step, size_mib - offset_mib)
                h = tus_headers(
                    token,
                    Upload_Offset=str(offset_mib * BLOCK),
                    Content_Type="application/offset+octet-stream",
                    Content_Length=str(count * BLOCK),
                )
                async with s.patch(url, data=blocks(offset_mib, count), headers=h) as resp:
                    assert resp.status == 204, await resp.text()
                offset_mib += count
            elapsed = time.perf_counter() - started
            written = gateway_proc.io_counters().write_bytes - written_before
            async with s.get(
                f"{node.url}/api/v1/cases/BENCH-1/files", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                (record,) = await resp.json()
        stop.set()
        await sampler
        assert record["sha256"] == expected.hexdigest(), "SHA-256 mismatch"
        return {
            "bytes": total,
            "patches": -(-size_mib // step),
            "seconds": round(elapsed, 2),
            "throughput_MBps": round(total / elapsed / 1e6, 1),
            "gateway_rss_idle_MiB": round(idle_rss / BLOCK, 1),
            "gateway_rss_peak_MiB": round(peak[0] / BLOCK, 1),
            "storage": node.env.get("EFTGW_STORAGE", "filesystem"),
            "gateway_local_disk_writes_MiB": round(written / BLOCK, 1),
            "sha256_verified": True,
        }
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--patch-mib", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the data dir")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="eftgw-bench-"))
    try:
        result = asyncio.run(run(args.size_mib, args.patch_mib, tmp / "data"))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
