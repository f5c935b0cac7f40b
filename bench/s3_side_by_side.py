"""Benchmark: eftgw on S3 against a raw minio-py multipart put of the same bytes to the same S3, same run.

Two measurements, each repeated ``--rounds`` times with eftgw and the raw put alternating, reported as
medians and the ratio eftgw / raw (MB/s, 10^6 bytes per second), each round with the load average:

- ``single``: one file (default 1 GiB) sent in one tus PATCH over plain HTTP (``EFTGW_TLS=off``) to a real
  ``eftgw serve`` process on S3, completion included (the PATCH answers once the file exists); against
  ``Minio.put_object`` of the same bytes with 16 MiB parts;
- ``concurrent``: ``--streams`` uploads (default 8 of 256 MiB) at once, aggregate bytes over wall time;
  against as many raw puts at once (threads).

Each round also gives its *tail*, the seconds from the end of the last body (the last block handed to the
HTTP client, or read by minio) to the last answer (the gateway's PATCH answer after completion, the end of
``put_object``), and the CPU seconds per GiB of the sender (the gateway process; the raw put's own process),
a figure that the load of a shared machine disturbs much less than MB/s. Each round also splits the whole
machine's CPU per GiB by where it went (``machine_cpu_s_per_GiB_medians``): the S3 server's processes
(radosgw and the Ceph daemons, or minio), the gateway, this process (the sender, or the raw put itself) and
the rest (anything else running). When they all share the machine's cores, a round's MB/s follows its
total, so the ratio eftgw / raw is close to raw's total over eftgw's. The gateway's peak RSS is sampled
every 50 ms. Every file's SHA-256 is checked against the gateway's record.
The S3 server and bucket come from the EFTGW_TEST_S3_* variables (the bucket is made and emptied here):

    EFTGW_TEST_S3_ENDPOINT=127.0.0.1:7481 EFTGW_TEST_S3_ACCESS_KEY=... EFTGW_TEST_S3_SECRET_KEY=... \\
    .venv/bin/python bench/s3_side_by_side.py [--size-mib 1024] [--streams 8] [--stream-mib 256] [--rounds 3]

``--compare-tree DIR`` adds a second gateway running the code of another eftgw checkout (e.g.
``git worktree add /tmp/base main``), measured in the same rounds between this checkout's gateway and
the raw put (``single_base``, ``many_base``; ``base_ratio_*`` is this gateway's MB/s over it), so a
change is measured against the code before it under the same load; which gateway goes first alternates.
``--py-spy DIR`` records this checkout's gateway with ``py-spy --threads --native`` (one raw
flame file per round).

``--size-mib 20480 --streams 0 --rounds 1 --no-raw`` measures one big upload (throughput and peak RSS) alone;
``--size-mib 0`` skips the single upload, ``--streams 0`` the concurrent ones. ``EFTGW_UPLOAD_MEMORY`` in the
environment is passed on to the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
from minio import Minio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.storage.conftest import empty_bucket
from tests.support import GatewayProcess

MiB = 1024 * 1024
PART = 16 * MiB


def block(seed: int, index: int) -> bytes:
    """The ``index``-th MiB of stream ``seed``: distinct blocks, made on the fly."""
    return hashlib.sha256(f"{seed}:{index}".encode()).digest() * (MiB // 32)


async def body(seed: int, size_mib: int, ended: list[float]) -> AsyncIterator[bytes]:
    """The ``size_mib`` blocks of stream ``seed``; appends when the last one was handed over to ``ended``."""
    for i in range(size_mib):
        yield block(seed, i)
    ended.append(time.perf_counter())


def sha256_of(seed: int, size_mib: int) -> str:
    digest = hashlib.sha256()
    for i in range(size_mib):
        digest.update(block(seed, i))
    return digest.hexdigest()


class Blocks(io.RawIOBase):
    """The same bytes as :func:`body` as a file object (what minio's put_object reads)."""

    def __init__(self, seed: int, size_mib: int) -> None:
        self.seed, self.size_mib, self.index, self.pending = seed, size_mib, 0, b""
        self.ended = 0.0  # when the last bytes were read

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while (size < 0 or len(out) < size) and (self.pending or self.index < self.size_mib):
            if not self.pending:
                self.pending = block(self.seed, self.index)
                self.index += 1
            take = len(self.pending) if size < 0 else min(size - len(out), len(self.pending))
            out += self.pending[:take]
            self.pending = self.pending[take:]
        if not self.ended and not self.pending and self.index == self.size_mib:
            self.ended = time.perf_counter()
        return bytes(out)


class Gateway:
    def __init__(self, node: GatewayProcess) -> None:
        self.node = node
        self.url = f"http://127.0.0.1:{node.port}"
        self.token = node.token("BENCH-1")
        self.peak_rss = 0

    async def sample(self, stop: asyncio.Event) -> None:
        assert self.node.proc is not None
        proc = psutil.Process(self.node.proc.pid)
        while not stop.is_set():
            self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
            await asyncio.sleep(0.05)

    async def upload(self, session: aiohttp.ClientSession, seed: int, size_mib: int) -> tuple[float, float]:
        """Create and send one upload; return when its body ended and when the gateway answered."""
        auth = {"Authorization": f"Bearer {self.token}", "Tus-Resumable": "1.0.0"}
        created = {**auth, "Upload-Length": str(size_mib * MiB), "Upload-Metadata": "filename YmVuY2g="}
        async with session.post(f"{self.url}/api/v1/cases/BENCH-1/uploads", headers=created) as resp:
            assert resp.status == 201, await resp.text()
            location = resp.headers["Location"]
        patch = {
            **auth,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(size_mib * MiB),
        }
        ended: list[float] = []
        async with session.patch(location, data=body(seed, size_mib, ended), headers=patch) as resp:
            assert resp.status == 204, await resp.text()
        return ended[0], time.perf_counter()

    async def sha256s(self, session: aiohttp.ClientSession) -> set[str]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with session.get(f"{self.url}/api/v1/cases/BENCH-1/files", headers=headers) as resp:
            return {f["sha256"] for f in await resp.json()}


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def minor_faults(pid: int) -> int:
    """Page faults the process took without I/O (fresh memory touched): field 10 of /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[7])


S3_SERVER = ("radosgw", "ceph-osd", "ceph-mon", "ceph-mgr", "minio")  # process names of the S3 server


class MachineCpu:
    """Where the machine's CPU went during a round, in seconds per GiB uploaded: the S3 server's processes
    (``S3_SERVER``), the gateway, this process (the sender: making and sending the bodies, or the raw put
    itself) and the rest (anything else running), from the whole machine's busy time. On a machine where
    all of them share the cores, a round's throughput follows its total."""

    def __init__(self, gateway: int | None) -> None:
        self.gateway = psutil.Process(gateway) if gateway is not None else None
        self.me = psutil.Process()
        self._at: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal
        server = 0.0
        for proc in psutil.process_iter(["name", "cpu_times"]):
            if (proc.info["name"] or "").startswith(S3_SERVER) and proc.info["cpu_times"] is not None:
                server += proc.info["cpu_times"].user + proc.info["cpu_times"].system
        gateway = cpu_seconds(self.gateway) if self.gateway is not None else 0.0
        return {"total": busy, "s3_server": server, "gateway": gateway, "sender": cpu_seconds(self.me)}

    def start(self) -> None:
        self._at = self._now()

    def split(self, gib: float) -> dict[str, float]:
        now = self._now()
        spent = {k: (now[k] - self._at[k]) / gib for k in now}
        spent["rest"] = spent["total"] - spent["s3_server"] - spent["gateway"] - spent["sender"]
        return {k: round(v, 2) for k, v in spent.items()}


Measured = tuple[float, float, float, dict[str, float]]
"""MB/s, the sender's CPU seconds per GiB, the tail (seconds from the last body's end to the last answer)
and the machine's CPU per GiB by where it went (:class:`MachineCpu`)."""


def tail_of(times: list[tuple[float, float]]) -> float:
    """The tail of a round of uploads, each (body ended, answered): what the last one took past its end."""
    return max(done for _end, done in times) - max(end for end, _done in times)


async def eftgw_round(gw: Gateway, seeds: list[int], size_mib: int) -> Measured:
    """MB/s, the gateway's CPU seconds per GiB and the tail of one round (page faults go to stderr)."""
    assert gw.node.proc is not None
    gateway = psutil.Process(gw.node.proc.pid)
    gib = len(seeds) * size_mib / 1024
    machine = MachineCpu(gateway.pid)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        cpu, faults = cpu_seconds(gateway), minor_faults(gateway.pid)
        machine.start()
        started = time.perf_counter()
        times = await asyncio.gather(*(gw.upload(session, seed, size_mib) for seed in seeds))
        elapsed = time.perf_counter() - started
        split = machine.split(gib)
        cpu, faults = cpu_seconds(gateway) - cpu, minor_faults(gateway.pid) - faults
        stored = await gw.sha256s(session)
    for seed in seeds:
        assert sha256_of(seed, size_mib) in stored, "SHA-256 mismatch"
    print(f"gateway: {faults / gib:.0f} page faults per GiB", file=sys.stderr, flush=True)
    return len(seeds) * size_mib * MiB / elapsed / 1e6, cpu / gib, tail_of(list(times)), split


async def raw_round(client: Minio, bucket: str, seeds: list[int], size_mib: int) -> Measured:
    """MB/s, this process's CPU seconds per GiB (making the bytes included) and the tail of one round."""

    def put(seed: int) -> tuple[float, float]:
        blocks = Blocks(seed, size_mib)
        client.put_object(bucket, f"raw/{seed}", blocks, size_mib * MiB, part_size=PART)
        return blocks.ended, time.perf_counter()

    gib = len(seeds) * size_mib / 1024
    machine = MachineCpu(None)
    cpu = time.process_time()
    machine.start()
    started = time.perf_counter()
    times = await asyncio.gather(*(asyncio.to_thread(put, seed) for seed in seeds))
    elapsed = time.perf_counter() - started
    split = machine.split(gib)
    cpu = time.process_time() - cpu
    return len(seeds) * size_mib * MiB / elapsed / 1e6, cpu / gib, tail_of(times), split


def gateway_env(endpoint: str, access: str, secret: str, bucket: str) -> dict[str, str]:
    return {
        "EFTGW_TLS": "off",
        "EFTGW_STORAGE": "s3",
        "EFTGW_S3_ENDPOINT": endpoint,
        "EFTGW_S3_ACCESS_KEY": access,
        "EFTGW_S3_SECRET_KEY": secret,
        "EFTGW_S3_BUCKET": bucket,
        "EFTGW_S3_SECURE": "false",
        "EFTGW_LOG_LEVEL": "WARNING",
        **{k: v for k, v in os.environ.items() if k == "EFTGW_UPLOAD_MEMORY"},
    }


class Spy:
    """``py-spy record`` of a process for one measurement (``--py-spy``): started before, stopped after."""

    def __init__(self, directory: Path | None, pid: int) -> None:
        self.directory, self.pid = directory, pid
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, name: str) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = self.directory / f"{name}.txt"
        command = [spy, "record", "--threads", "--native", "--rate", "100", "--format", "raw"]
        self.proc = subprocess.Popen(
            [*command, "-o", str(out), "-p", str(self.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it attach

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)
            self.proc = None


async def measure(args: argparse.Namespace, data_dir: Path) -> dict[str, object]:
    endpoint = os.environ["EFTGW_TEST_S3_ENDPOINT"].removeprefix("http://")
    access, secret = os.environ["EFTGW_TEST_S3_ACCESS_KEY"], os.environ["EFTGW_TEST_S3_SECRET_KEY"]
    bucket = "eftgw-bench-" + secrets.token_hex(4)
    raw = Minio(endpoint, access, secret, secure=False)
    raw.make_bucket(bucket)
    env = gateway_env(endpoint, access, secret, bucket)
    node = GatewayProcess(data_dir, env=env).start()
    base: GatewayProcess | None = None
    if args.compare_tree is not None:
        base = GatewayProcess(data_dir.parent / "base", env=env, tree=args.compare_tree).start()
    kinds = ["single_eftgw", "single_base", "single_raw", "many_eftgw", "many_base", "many_raw"]
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    loads: dict[str, list[float]] = {k: [] for k in results}
    cpu: dict[str, list[float]] = {k: [] for k in results}
    tails: dict[str, list[float]] = {k: [] for k in results}
    machine: dict[str, list[dict[str, float]]] = {k: [] for k in results}

    def note(kind: str, measured: Measured) -> None:
        mbps, cpu_per_gib, tail, split = measured
        results[kind].append(mbps)
        cpu[kind].append(round(cpu_per_gib, 2))
        tails[kind].append(round(tail, 3))
        loads[kind].append(round(os.getloadavg()[0], 1))
        machine[kind].append(split)
        print(
            f"{kind}: {mbps:.1f} MB/s, {cpu_per_gib:.2f} CPU s/GiB, tail {tail:.3f} s,"
            f" load average {loads[kind][-1]}; machine CPU s/GiB: "
            + ", ".join(f"{k} {v:.2f}" for k, v in split.items()),
            file=sys.stderr,
            flush=True,
        )

    try:
        node.cli("case", "open", "BENCH-1")
        gw = Gateway(node)
        assert node.proc is not None
        spy = Spy(args.py_spy, node.proc.pid)
        compared: Gateway | None = None
        if base is not None:
            base.cli("case", "open", "BENCH-1")
            compared = Gateway(base)
        stop = asyncio.Event()
        sampler = asyncio.create_task(gw.sample(stop))
        base_sampler = asyncio.create_task(compared.sample(stop)) if compared is not None else None

        async def one(kind: str, seeds: list[int], size_mib: int) -> None:
            """This gateway, the compared one (if any) and the raw put, one after the other."""
            order = [("eftgw", gw), ("base", compared)]
            if len(results[f"{kind}_eftgw"]) % 2:  # alternate which gateway goes first
                order.reverse()
            for name, target in order:
                if target is None:
                    continue
                if target is gw:
                    spy.start(f"{kind}-{len(results[f'{kind}_eftgw']) + 1}")
                note(f"{kind}_{name}", await eftgw_round(target, seeds, size_mib))
                if target is gw:
                    spy.stop()
                empty_bucket(raw, bucket)  # keep the shared S3 server's disk in check
            if not args.no_raw:
                note(f"{kind}_raw", await raw_round(raw, bucket, seeds, size_mib))
                empty_bucket(raw, bucket)

        for seed in range(1, args.rounds + 1):
            if args.size_mib:
                await one("single", [seed], args.size_mib)
            if args.streams:
                await one("many", list(range(seed * 100, seed * 100 + args.streams)), args.stream_mib)
        stop.set()
        await sampler
        if base_sampler is not None:
            await base_sampler
    except BaseException:
        for failed in (node, base):  # what the gateway said about the failure
            if failed is not None:
                print(f"--- {failed.log_path}:\n{failed.log_tail()}", file=sys.stderr, flush=True)
        raise
    finally:
        node.stop()
        if base is not None:
            base.stop()
        empty_bucket(raw, bucket, remove=True)
    medians = {k: round(statistics.median(v), 1) for k, v in results.items() if v}

    def ratio(kind: str) -> float | None:
        both = f"{kind}_eftgw" in medians and f"{kind}_raw" in medians
        return round(medians[f"{kind}_eftgw"] / medians[f"{kind}_raw"], 2) if both else None

    def base_ratio(kind: str) -> float | None:
        both = f"{kind}_eftgw" in medians and f"{kind}_base" in medians
        return round(medians[f"{kind}_eftgw"] / medians[f"{kind}_base"], 2) if both else None

    def cpu_median(kind: str) -> float | None:
        return round(statistics.median(cpu[kind]), 2) if cpu[kind] else None

    def machine_medians(kind: str) -> dict[str, float]:
        return {k: round(statistics.median(s[k] for s in machine[kind]), 2) for k in machine[kind][0]}

    return {
        "compare_tree": str(args.compare_tree) if args.compare_tree is not None else None,
        "single": f"{args.size_mib} MiB in one PATCH, plain HTTP, completion included",
        "concurrent": f"{args.streams} x {args.stream_mib} MiB at once",
        "upload_memory": os.environ.get("EFTGW_UPLOAD_MEMORY", "default"),
        "rounds_MBps": {k: [round(x, 1) for x in v] for k, v in results.items() if v},
        "load_average_per_round": {k: v for k, v in loads.items() if v},
        "medians_MBps": medians,
        "cpu_s_per_GiB_per_round": {k: v for k, v in cpu.items() if v},
        "ratio_single": ratio("single"),
        "ratio_concurrent": ratio("many"),
        "base_ratio_single": base_ratio("single"),
        "base_ratio_concurrent": base_ratio("many"),
        "cpu_s_per_GiB_medians": {k: cpu_median(k) for k in kinds if cpu[k]},
        "tail_s_per_round": {k: v for k, v in tails.items() if v},
        "machine_cpu_s_per_GiB_medians": {k: machine_medians(k) for k in kinds if machine[k]},
        "gateway_peak_rss_MiB": round(gw.peak_rss / MiB, 1),
        "compared_gateway_peak_rss_MiB": round(compared.peak_rss / MiB, 1) if compared is not None else None,
        "load_average_at_end": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--stream-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-raw", action="store_true", help="eftgw only (e.g. one big upload for its RSS)")
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="also measure the gateway of this eftgw checkout (single_base, many_base)",
    )
    parser.add_argument("--py-spy", type=Path, help="record this gateway with py-spy into this directory")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="eftgw-bench-"))
    try:
        result = asyncio.run(measure(args, tmp / "data"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
