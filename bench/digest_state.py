"""Benchmark: whole-file hashing with an exportable state, against hashlib and the ``xxhash`` package.

A node that takes over an upload continues its SHA-256 and XXH3-128 from the state saved with the last
commit (``eftgw/digest_state.py``), so that state must be exportable, and hashing it must stay as fast as
hashlib's. This measures, in MB/s (10^6 bytes per second) on 1 MiB blocks as the upload path feeds them:

- ``hashlib.sha256`` and ``xxhash.xxh3_128`` (what eftgw used before; neither can export its state);
- eftgw's ``ResumableSha256`` / ``ResumableXxh128`` (OpenSSL libcrypto and xxHash through ctypes);
- the PyPI candidates with an exportable SHA-256, when installed in the running interpreter (they are not
  eftgw dependencies; install them in a scratch venv to compare): ``rehash`` (pickles hashlib's OpenSSL
  context; refuses OpenSSL 3), ``rehashes`` (RustCrypto, serialize/deserialize), ``sha256`` (Cython,
  "with midstate"), ``resumablesha256`` (B-Con's C code, picklable);
- ``two_threads``: the same hasher in two threads at once (wall time), relative to one: near 2x on an idle
  machine with two free cores means it releases the GIL (it must: the gateway hashes in a worker thread
  while the event loop serves other transfers); below 1x means the GIL serialises the threads;
- ``new_vs_old``: the median ratio of eftgw's hashers to hashlib/xxhash over back-to-back pairs of runs
  (1.0 = as fast; pairs cancel most of the noise of a shared machine);
- the cost of one export and one import of the whole-file state.

    .venv/bin/python bench/digest_state.py [--size-mib 512] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eftgw import digest_state
from eftgw.hashing import FileDigests

BLOCK = 1024 * 1024


def candidates() -> dict[str, Callable[[], Any]]:
    """Name -> factory of an object with ``update(bytes)``; the PyPI ones only where they import and work."""
    found: dict[str, Callable[[], Any]] = {
        "hashlib.sha256": hashlib.sha256,
        "xxhash.xxh3_128": xxhash.xxh3_128,
        "hashlib.sha256 + xxhash.xxh3_128": lambda: _Both(hashlib.sha256(), xxhash.xxh3_128()),
        "eftgw ResumableSha256 (libcrypto)": digest_state.ResumableSha256,
        "eftgw ResumableXxh128 (xxHash C API)": digest_state.ResumableXxh128,
        "eftgw FileDigests (both, exportable)": FileDigests,
    }
    try:
        import rehash

        rehash.sha256()
        found["rehash.sha256"] = rehash.sha256
    except Exception as exc:
        print(f"rehash: not usable here ({type(exc).__name__}: {exc})", file=sys.stderr)
    try:
        import rehashes

        found["rehashes.PySha256 (RustCrypto)"] = rehashes.PySha256
    except ImportError as exc:
        print(f"rehashes: not installed ({exc})", file=sys.stderr)
    try:
        import sha256

        found["sha256.sha256 (Cython, midstate)"] = lambda: sha256.sha256(None)
    except ImportError as exc:
        print(f"sha256: not installed ({exc})", file=sys.stderr)
    try:
        import resumablesha256

        found["resumablesha256.sha256"] = resumablesha256.sha256
    except ImportError as exc:
        print(f"resumablesha256: not installed ({exc})", file=sys.stderr)
    return found


class _Both:
    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def update(self, data: bytes) -> None:
        self.a.update(data)
        self.b.update(data)


def speed(factory: Callable[[], Any], blocks: list[bytes], total: int, seconds: float = 3.0) -> float:
    """MB/s of this thread's CPU time over ``total`` bytes, or over what was hashed in ``seconds`` of it.

    CPU time rather than wall time, so that other work on the machine does not count against a candidate.
    """
    hasher = factory()
    started = time.thread_time()
    done = 0
    while done < total and time.thread_time() - started < seconds:
        hasher.update(blocks[(done // BLOCK) % len(blocks)])
        done += BLOCK
    return done / (time.thread_time() - started) / 1e6


def threaded(factory: Callable[[], Any], blocks: list[bytes], total: int) -> float:
    """Aggregate MB/s of two threads hashing ``total`` bytes each."""
    results: list[float] = []
    threads = [threading.Thread(target=lambda: results.append(speed(factory, blocks, total))) for _ in "ab"]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 2 * total / (time.perf_counter() - started) / 1e6


def paired(runs: int, blocks: list[bytes]) -> dict[str, float]:
    """Median ratio new/old over back-to-back runs (128 MiB each, CPU time): the hot path's cost."""
    pairs = {
        "sha256": (hashlib.sha256, digest_state.ResumableSha256),
        "xxh128": (xxhash.xxh3_128, digest_state.ResumableXxh128),
        "both": (lambda: _Both(hashlib.sha256(), xxhash.xxh3_128()), FileDigests),
    }
    ratios: dict[str, float] = {}
    for name, (old, new) in pairs.items():
        samples = [
            speed(new, blocks, 128 * BLOCK) / speed(old, blocks, 128 * BLOCK) for _ in range(max(runs, 1) * 6)
        ]
        ratios[name] = round(statistics.median(samples), 3)
    return ratios


def state_cost(runs: int = 2000) -> dict[str, float]:
    digests = FileDigests()
    digests.update(os.urandom(3 * BLOCK + 77))
    started = time.perf_counter()
    for _ in range(runs):
        state = digests.export()
    exported = time.perf_counter()
    assert state is not None
    for _ in range(runs):
        FileDigests.restore(state, digests.size)
    restored = time.perf_counter()
    return {
        "export_us": (exported - started) / runs * 1e6,
        "restore_us": (restored - exported) / runs * 1e6,
        "state_bytes": len(state),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=512, help="bytes hashed per measurement")
    parser.add_argument("--runs", type=int, default=3, help="measurements per hasher; the best counts")
    args = parser.parse_args()
    if not digest_state.available():
        sys.exit("eftgw's resumable hashers are not available here (see the log line above)")
    blocks = [os.urandom(BLOCK) for _ in range(8)]
    total = args.size_mib * BLOCK
    report: dict[str, Any] = {"size_mib": args.size_mib, "block": BLOCK, "mb_per_s": {}, "two_threads": {}}
    found = candidates()
    best = dict.fromkeys(found, 0.0)
    for _ in range(args.runs):  # round-robin, so that a busy moment does not fall on one candidate only
        for name, factory in found.items():
            best[name] = max(best[name], speed(factory, blocks, total))
    for name, factory in found.items():
        both = threaded(factory, blocks, min(total, int(best[name] * 1e6)) // 2)
        report["mb_per_s"][name] = round(best[name])
        report["two_threads"][name] = round(both / best[name], 2)
        print(f"{name:40s} {best[name]:8.0f} MB/s   two threads: x{both / best[name]:.2f}", file=sys.stderr)
    report["new_vs_old"] = paired(args.runs, blocks)
    print(f"eftgw / hashlib+xxhash, paired medians: {report['new_vs_old']}", file=sys.stderr)
    report["state"] = {k: round(v, 1) for k, v in state_cost().items()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
