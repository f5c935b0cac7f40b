"""Benchmark: the floor of a hashing, fsyncing HTTP upload on this machine, beside @tus/server and eftgw.

How fast can a Python server with nothing in the way take a 1 GiB body from curl over plain HTTP, and what
does it cost in CPU? The floor server (``--serve``, started as its own process) is asyncio with no HTTP
library: a :class:`asyncio.BufferedProtocol` that has the kernel copy the body straight into
preallocated blocks (``--block-kib``, ``--blocks`` of them), hands each full block to two worker threads at
once (whole-file SHA-256 + xxh128 in one, ``pwrite`` through the page cache in the other, like eftgw's body
pipeline before direct I/O) while the next blocks fill, and ``fsync`` s before it answers 204. Its modes
take parts away, to split the cost:

- ``direct``: hash + write with direct I/O (``O_DIRECT``, as eftgw's filesystem store) + fsync;
- ``full``: hash + write through the page cache + fsync;
- ``write``: write + fsync, no hashing;
- ``hash``: hash only, nothing written;
- ``discard``: the body is received and dropped (the kernel's copy, curl and the loop alone).

Each round sends the file once to every target in turn (floor modes, ``@tus/server`` with its file store,
eftgw's ``serve`` with SQLite and the filesystem store), so load from elsewhere hits all alike. Prints per
target the MB/s of each round (curl's own timing), the median, the server's CPU seconds per GiB (user +
system, all threads, psutil) and curl's (the bench's waited children, getrusage), and the load average
before and after, as JSON.

    .venv/bin/python bench/http_floor.py [--size-mib 1024] [--rounds 3] [--modes full,write,hash,discard]
        [--block-kib 1024] [--blocks 4] [--no-eftgw] [--no-tus]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import mmap
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import xxhash

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from http_vs_tus_node import (  # noqa: E402
    GIB,
    MIB,
    TusNode,
    cpu_seconds,
    create,
    ensure_node_modules,
    free_port,
    make_file,
    patch,
)

from tests.support import GatewayProcess  # noqa: E402

MODES = ("direct", "full", "write", "hash", "discard")
WRITING = ("direct", "full", "write")
HASHING = ("direct", "full", "hash")
ALIGN = 4096
MAX_HEAD = 64 * 1024


# the floor server ------------------------------------------------------------------------------------


class FloorProtocol(asyncio.BufferedProtocol):
    """One request per connection: read the head, then the body into two alternating preallocated blocks."""

    def __init__(
        self, directory: Path, mode: str, block: int, count: int, pools: tuple[ThreadPoolExecutor, ...]
    ) -> None:
        self.directory = directory
        self.mode = mode
        # one thread hashes, one writes: each takes the blocks in order
        self.hashing, self.writing, self.pool = pools
        self.blocks = [mmap.mmap(-1, block) for _ in range(count)]  # page-aligned, for direct I/O
        self.views = [memoryview(b) for b in self.blocks]
        self.current = 0  # the block being filled
        self.filled = 0
        self.head = bytearray()
        self.remaining: int | None = None  # body bytes still to come, once the head is read
        self.position = 0
        # per block, the hashing and writing of what it held (done before it is filled again)
        self.pending: list[asyncio.Future[list[object]] | None] = [None] * count
        self.sha256 = hashlib.sha256()
        self.xxh128 = xxhash.xxh3_128()
        self.fd = -1
        self.direct_fd = -1
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.remaining is None:
            return self.views[self.current][self.filled : self.filled + 4096]
        return self.views[self.current][self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.remaining is None:
            self._head(nbytes)
            return
        self.filled += nbytes
        self.remaining -= nbytes
        if self.filled == len(self.blocks[self.current]) or self.remaining <= 0:
            self._hand_on()

    def _head(self, nbytes: int) -> None:
        view = self.views[self.current]
        self.head += view[:nbytes]
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_HEAD:
                self._answer(b"431 Request Header Fields Too Large")
            return
        length = 0
        for line in bytes(self.head[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        rest = self.head[end + 4 :]
        self.remaining = length - len(rest)
        self.blocks[self.current][: len(rest)] = rest
        self.filled = len(rest)
        if self.mode in WRITING:
            path = self.directory / f"upload-{os.getpid()}-{id(self)}"
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            if self.mode == "direct":
                self.direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
            os.unlink(path)  # the bytes still go to disk; nothing is left behind
        if self.remaining <= 0:
            self._hand_on()

    def _hand_on(self) -> None:
        """The current block is full (or the body ended): hash and write it while the other one fills."""
        view = self.views[self.current][: self.filled]
        jobs = []
        if self.mode in HASHING:
            jobs.append(self.loop.run_in_executor(self.hashing, self._hash, view))
        if self.mode in WRITING:
            jobs.append(self.loop.run_in_executor(self.writing, self._write, view, self.position))
        self.position += self.filled
        this = asyncio.gather(*jobs)
        self.pending[self.current] = this
        self.current = (self.current + 1) % len(self.blocks)
        self.filled = 0
        assert self.transport is not None
        previous = self.pending[self.current]
        if previous is not None and not previous.done():
            # Every block is in use: read no more until the oldest one is done.
            self.transport.pause_reading()
            previous.add_done_callback(lambda _: self._resume())
        assert self.remaining is not None
        if self.remaining <= 0:
            self.loop.create_task(self._finish(this))

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _hash(self, view: memoryview) -> None:
        self.sha256.update(view)
        self.xxh128.update(view)

    def _write(self, view: memoryview, position: int) -> None:
        if self.direct_fd >= 0:  # whole 4 KiB units with direct I/O (only the body's last block has a tail)
            whole = len(view) - len(view) % ALIGN
            while whole:
                written = os.pwrite(self.direct_fd, view[:whole], position)
                view, position, whole = view[written:], position + written, whole - written
        while view:
            written = os.pwrite(self.fd, view, position)
            view, position = view[written:], position + written

    async def _finish(self, last: asyncio.Future[list[object]]) -> None:
        await asyncio.gather(*(p for p in self.pending if p is not None))
        if self.fd >= 0:
            await self.loop.run_in_executor(self.pool, os.fsync, self.fd)
            os.close(self.fd)
            self.fd = -1
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1
        self._answer(b"204 No Content", f"Upload-Offset: {self.position}\r\n".encode())

    def _answer(self, status: bytes, headers: bytes = b"") -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\n" + headers + b"Tus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n"
        )
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1


async def serve(port: int, directory: Path, mode: str, block: int, count: int) -> None:
    pools = (ThreadPoolExecutor(1), ThreadPoolExecutor(1), ThreadPoolExecutor(1))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FloorProtocol(directory, mode, block, count, pools), "127.0.0.1", port, backlog=64
    )
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


# the bench ----------------------------------------------------------------------------------------


class FloorServer:
    def __init__(self, directory: Path, mode: str, block: int, count: int) -> None:
        directory.mkdir(parents=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(self.port),
                str(directory),
                mode,
                str(block),
                str(count),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "listening":
            raise RuntimeError("the floor server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    size = args.size_mib * MIB
    source = work / "upload.bin"
    make_file(source, args.size_mib)
    load_before = os.getloadavg()
    targets: dict[str, tuple[psutil.Process, object]] = {}
    stops = []
    try:
        for mode in args.modes.split(","):
            floor = FloorServer(work / f"floor-{mode}", mode, args.block_kib * 1024, args.blocks)
            stops.append(floor.stop)
            targets[f"floor-{mode}"] = (psutil.Process(floor.proc.pid), floor)
        if not args.no_tus:
            ensure_node_modules()
            peer = TusNode(work / "tus")
            stops.append(peer.stop)
            targets["tus-node"] = (psutil.Process(peer.proc.pid), peer)
        if not args.no_eftgw:
            gateway = GatewayProcess(work / "eftgw", env={"EFTGW_TLS": "off", "EFTGW_LOG_LEVEL": "WARNING"})
            gateway.start()
            stops.append(gateway.stop)
            gateway.cli("case", "open", "BENCH-1")
            assert gateway.proc is not None
            targets["eftgw"] = (psutil.Process(gateway.proc.pid), gateway)
            token = gateway.token("BENCH-1")
        results: dict[str, dict[str, list[float]]] = {
            name: {"MBps": [], "cpu": [], "curl_cpu": []} for name in targets
        }
        for n in range(args.rounds):
            for name, (proc, target) in targets.items():
                if isinstance(target, FloorServer):
                    url, headers = f"http://127.0.0.1:{target.port}/floor/{n}", ["-H", "Tus-Resumable: 1.0.0"]
                elif isinstance(target, TusNode):
                    headers = ["-H", "Tus-Resumable: 1.0.0"]
                    url = create(target.url, size, headers)
                else:
                    assert isinstance(target, GatewayProcess)
                    headers = ["-H", f"Authorization: Bearer {token}", "-H", "Tus-Resumable: 1.0.0"]
                    base = f"http://127.0.0.1:{target.port}/api/v1/cases/BENCH-1/uploads"
                    url = create(base, size, [*headers, "-H", f"Upload-Metadata: filename {_b64(f'r{n}')}"])
                cpu, curl_cpu = cpu_seconds(proc), children_cpu()
                mbps = patch(url, source, headers)
                results[name]["cpu"].append(cpu_seconds(proc) - cpu)
                results[name]["curl_cpu"].append(children_cpu() - curl_cpu)
                results[name]["MBps"].append(mbps)
                if isinstance(target, TusNode):
                    (target.directory / url.rsplit("/", 1)[1]).unlink()
                print(f"round {n + 1}: {name} {mbps:.0f} MB/s", file=sys.stderr)
    finally:
        for stop in reversed(stops):
            stop()
    per_gib = GIB / size
    return {
        "bytes": size,
        "rounds": args.rounds,
        "block_KiB": args.block_kib,
        "blocks": args.blocks,
        "targets": {
            name: {
                "MBps": [round(x, 1) for x in r["MBps"]],
                "median_MBps": round(statistics.median(r["MBps"]), 1),
                "cpu_s_per_GiB": [round(c * per_gib, 2) for c in r["cpu"]],
                "median_cpu_s_per_GiB": round(statistics.median(r["cpu"]) * per_gib, 2),
                "curl_cpu_s_per_GiB": round(statistics.median(r["curl_cpu"]) * per_gib, 2),
            }
            for name, r in results.items()
        },
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        port, directory, mode, block, count = sys.argv[2:7]
        asyncio.run(serve(int(port), Path(directory), mode, int(block), int(count)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--modes", default=",".join(MODES), help="floor modes, comma-separated: " + ",".join(MODES)
    )
    parser.add_argument("--block-kib", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=4, help="the floor's preallocated blocks")
    parser.add_argument("--no-eftgw", action="store_true")
    parser.add_argument("--no-tus", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eftgw-bench-floor-"))
    try:
        result = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
