"""Benchmark: a 2 GiB upload streamed into the S3 backend, measuring throughput, local disk use and memory.

Targets (``--target``):

- ``store``: straight through :class:`eftgw.storage.s3.S3Store`'s writer (what the S3 backend itself costs);
- ``service``: through :class:`eftgw.uploads.UploadService` (hashing, commits, progress in the metadata
  database, promotion) on a gateway built from the EFTGW_* settings given below (SQLite in a temp dir unless
  ``--database-url``), as the HTTP and SFTP transports call it.

For the whole HTTP path (tus over TLS to an ``eftgw serve`` process) run ``bench/upload_2gib.py`` with
``EFTGW_STORAGE=s3`` and the ``EFTGW_S3_*`` variables: it measures the same numbers for the gateway process.

"Local disk" is what this process made the kernel write to storage (``write_bytes`` of ``/proc/self/io``):
the S3 backend keeps upload data in memory on its way to S3, so it should stay near zero (SQLite pages in
``service`` mode aside). Throughput is in MB/s (10^6 bytes per second).

    EFTGW_TEST_S3_ENDPOINT=127.0.0.1:7480 EFTGW_TEST_S3_ACCESS_KEY=... EFTGW_TEST_S3_SECRET_KEY=... \\
    .venv/bin/python bench/s3_upload.py [--size-mib 2048] [--target store|service] [--commit-mib 0]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eftgw.config import Settings
from eftgw.gateway import Gateway
from eftgw.model import SYSTEM, Principal, Role
from eftgw.storage import object_key, staging_key
from eftgw.storage.s3 import S3Store

BLOCK = 1024 * 1024


class Probe:
    """Peak RSS (sampled every 50 ms) and bytes written to storage by this process."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.idle_rss = self.process.memory_info().rss
        self.peak_rss = self.idle_rss
        self.written_before = self.process.io_counters().write_bytes
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> dict[str, float]:
        if self._task is not None:
            self._task.cancel()
        return {
            "idle_rss_mib": round(self.idle_rss / BLOCK, 1),
            "peak_rss_mib": round(self.peak_rss / BLOCK, 1),
            "local_disk_written_mib": round(
                (self.process.io_counters().write_bytes - self.written_before) / BLOCK, 2
            ),
        }


def blocks(size_mib: int, sha: hashlib._Hash | None = None) -> AsyncIterator[bytes]:
    """``size_mib`` distinct 1 MiB blocks, made on the fly (no file on disk)."""
    base = os.urandom(BLOCK)

    async def gen() -> AsyncIterator[bytes]:
        for i in range(size_mib):
            block = base[:8] + i.to_bytes(8, "big") + base[16:]
            if sha is not None:
                sha.update(block)
            yield block

    return gen()


def settings_from_env(data_dir: Path, bucket: str, database_url: str | None) -> Settings:
    endpoint = os.environ.get("EFTGW_TEST_S3_ENDPOINT") or os.environ.get("EFTGW_S3_ENDPOINT")
    if not endpoint:
        raise SystemExit('set EFTGW_TEST_S3_ENDPOINT (eval "$(scripts/ceph-rgw start)") or EFTGW_S3_ENDPOINT')
    access = os.environ.get("EFTGW_TEST_S3_ACCESS_KEY") or os.environ.get("EFTGW_S3_ACCESS_KEY", "")
    secret = os.environ.get("EFTGW_TEST_S3_SECRET_KEY") or os.environ.get("EFTGW_S3_SECRET_KEY", "")
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        storage="s3",
        s3_endpoint=endpoint,
        s3_access_key=SecretStr(access),
        s3_secret_key=SecretStr(secret),
        s3_bucket=bucket,
        s3_secure=endpoint.startswith("https://"),
    )


async def bench_store(store: S3Store, size_mib: int, commit_mib: int) -> dict[str, object]:
    case = "BENCH-" + secrets.token_hex(4)
    key, target = staging_key(case, "u1"), object_key(case, "f_1")
    await store.create_staging(key, target)  # as the engine does: staged for the file's key
    probe = Probe()
    probe.start()
    started = time.perf_counter()
    writer = await store.open_writer(key, 0)
    since_commit = 0
    async for block in blocks(size_mib):
        await writer.write(block)
        since_commit += 1
        if commit_mib and since_commit >= commit_mib:
            await writer.commit()
            since_commit = 0
    size = await writer.commit()
    await writer.close()
    streamed = time.perf_counter() - started
    await store.promote(key, target, {"case": case})
    total = time.perf_counter() - started
    result = await probe.stop()
    assert size == size_mib * BLOCK == await store.object_size(target)
    await store.delete_object(target)
    return {"streamed_s": round(streamed, 2), "promote_s": round(total - streamed, 2), **result}


async def bench_service(gateway: Gateway, size_mib: int, commit_mib: int) -> dict[str, object]:
    case = "BENCH-" + secrets.token_hex(4)
    await gateway.cases.open(SYSTEM, case)
    alice = Principal(user="alice", role=Role.CUSTOMER, case_id=case)
    total = size_mib * BLOCK
    upload = await gateway.uploads.create(alice, case, length=total, metadata={"filename": "bench.bin"})
    sha = hashlib.sha256()
    source = blocks(size_mib, sha)
    request_mib = commit_mib or size_mib
    probe = Probe()
    probe.start()
    started = time.perf_counter()
    offset = 0
    while offset < total:
        chunk_blocks = min(request_mib, (total - offset) // BLOCK)

        async def body(n: int = chunk_blocks) -> AsyncIterator[bytes]:
            for _ in range(n):
                yield await anext(source)

        upload = await gateway.uploads.append(alice, case, upload.id, offset, body())
        offset = upload.offset
    elapsed = time.perf_counter() - started
    result = await probe.stop()
    [record] = await gateway.files.list(alice, case)
    assert record.sha256 == sha.hexdigest() and record.size == total
    await gateway.files.delete(Principal("bench", Role.ENGINEER), case, record.id)
    return {"total_s_incl_promote": round(elapsed, 2), **result}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--target", choices=["store", "service"], default="store")
    parser.add_argument("--commit-mib", type=int, default=0, help="commit (store) / split requests (service)")
    parser.add_argument("--bucket", default="eftgw-bench")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eftgw-bench-") as tmp:
        gateway = Gateway.build(settings_from_env(Path(tmp), args.bucket, args.database_url))
        await gateway.start()
        try:
            if args.target == "store":
                assert isinstance(gateway.store, S3Store)
                result = await bench_store(gateway.store, args.size_mib, args.commit_mib)
                seconds = float(result["streamed_s"])  # type: ignore[arg-type]
            else:
                result = await bench_service(gateway, args.size_mib, args.commit_mib)
                seconds = float(result["total_s_incl_promote"])  # type: ignore[arg-type]
        finally:
            await gateway.close()
    size = args.size_mib * BLOCK
    report = {
        "target": args.target,
        "size_mib": args.size_mib,
        "commit_mib": args.commit_mib,
        "mb_per_s": round(size / seconds / 1e6, 1),
        **result,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
