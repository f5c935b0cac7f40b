"""Benchmark: what the S3 writer costs per GiB for the chunks it is handed, this tree against another
checkout, side by side in one run.

Each round runs one child process per tree, alternating: it opens an :class:`eftgw.storage.s3.S3Store` on the
test S3 server (``EFTGW_TEST_S3_*``) with the gateway's defaults (512 MiB budget, ``keep_freed_buffers``),
puts one unmeasured upload of 128 MiB (a gateway is long-lived: its buffers are warm), then
writes ``--size-mib`` as the body pipeline feeds it and commits: with ``--kind bytes`` as for an SFTP upload
(blocks of 2 MiB made of two fresh 1 MiB ``bytes`` pieces, the SFTP writer share); with ``--kind block`` as
for an HTTPS body received in place (one reused 2 MiB ``bytearray``, handed over whole to a writer that
declares ``copies_chunks``, else as views of 256 KiB, as the body pipeline of that tree does). It reports the
process's CPU seconds (all threads: the fills, hashing the parts' SHA-256, sending them) and minor page faults
per GiB of that upload, and its MB/s. Making the pieces is the same in both trees, so the difference between
the trees is the writer's.

    EFTGW_TEST_S3_ENDPOINT=127.0.0.1:7481 EFTGW_TEST_S3_ACCESS_KEY=... EFTGW_TEST_S3_SECRET_KEY=... \\
    .venv/bin/python bench/s3_writer_chunks.py --compare-tree /tmp/base [--kind bytes|block] [--size-mib 1024]
    [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
KEPT = 256 * 1024  # the views a body received in place was cut into for a writer that keeps its chunks
BUCKET = "eftgw-bench-writer"


async def child(size_mib: int, kind: str = "bytes") -> dict[str, float]:
    import resource
    import secrets
    import time

    from eftgw.memory import HTTP, SFTP
    from eftgw.storage import object_key, staging_key
    from eftgw.storage.budget import BufferBudget, keep_freed_buffers
    from eftgw.storage.s3 import S3Store
    from eftgw.storage.s3_client import S3Client

    budget = 512 * MiB
    keep_freed_buffers(budget)
    client = S3Client(
        os.environ["EFTGW_TEST_S3_ENDPOINT"].removeprefix("http://"),
        os.environ["EFTGW_TEST_S3_ACCESS_KEY"],
        os.environ["EFTGW_TEST_S3_SECRET_KEY"],
        BUCKET,
        secure=False,
    )
    store = S3Store(client, budget=BufferBudget(budget))
    await store.open()
    source = secrets.token_bytes(64 * MiB)

    async def upload(name: str, mib: int) -> None:
        key, target = staging_key("bench", name), object_key("bench", name)
        await store.create_staging(key, target)
        writer = await store.open_writer(key, 0, SFTP if kind == "bytes" else HTTP)
        whole = getattr(writer, "copies_chunks", False) is True
        block = bytearray(2 * MiB)
        try:
            for at in range(0, mib, 2):
                first = (at % 64) * MiB  # at is even: both pieces are inside the source
                if kind == "bytes":  # two fresh bytes per block, as SFTP's pieces are
                    pieces: list[Any] = [source[first : first + MiB], source[first + MiB : first + 2 * MiB]]
                else:  # the pipeline's block, received in place
                    block[:] = source[first : first + 2 * MiB]
                    view = memoryview(block)
                    pieces = [view] if whole else [view[i : i + KEPT] for i in range(0, len(view), KEPT)]
                await writer.write_chunks(pieces)
            await writer.commit()
        finally:
            await writer.close()
        await store.delete_staging(key)

    await upload(f"warm-{secrets.token_hex(4)}", 128)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await upload(f"run-{secrets.token_hex(4)}", size_mib)
    after, ended = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await store.close()
    gib = size_mib / 1024
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "cpu_s_per_gib": round(cpu / gib, 3),
        "faults_per_gib": round((after.ru_minflt - before.ru_minflt) / gib),
        "mb_s": round(size_mib * MiB / (ended - started) / 1e6, 1),
    }


def run_child(tree: Path, size_mib: int, kind: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = (
        f"import sys, asyncio, json; sys.path.insert(0, {str(tree)!r}); sys.path.insert(1, {str(ROOT)!r}); "
        "from bench.s3_writer_chunks import child; "
        f"print(json.dumps(asyncio.run(child({size_mib}, {kind!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = os.getloadavg()[0]
    return result


def ensure_bucket() -> None:
    from minio import Minio

    admin = Minio(
        os.environ["EFTGW_TEST_S3_ENDPOINT"].removeprefix("http://"),
        os.environ["EFTGW_TEST_S3_ACCESS_KEY"],
        os.environ["EFTGW_TEST_S3_SECRET_KEY"],
        secure=False,
    )
    if not admin.bucket_exists(BUCKET):
        admin.make_bucket(BUCKET)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kind", choices=["bytes", "block"], default="bytes")
    parser.add_argument("--compare-tree", type=Path, required=True, help="the other eftgw checkout (base)")
    args = parser.parse_args()
    ensure_bucket()
    trees = {"this": ROOT, "base": args.compare_tree.resolve()}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for n in range(args.rounds):
        order = list(trees) if n % 2 == 0 else list(reversed(trees))
        for name in order:
            result = run_child(trees[name], args.size_mib, args.kind)
            rounds[name].append(result)
            print(f"round {n + 1} {name}: {result}", file=sys.stderr, flush=True)
    summary = {
        name: {
            measure: statistics.median(r[measure] for r in results)
            for measure in ("cpu_s_per_gib", "faults_per_gib", "mb_s", "load")
        }
        for name, results in rounds.items()
    }
    report: dict[str, object] = {
        "size_mib": args.size_mib,
        "kind": args.kind,
        "rounds": rounds,
        "medians": summary,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
