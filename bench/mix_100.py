"""Benchmark: 100 concurrent uploads, HTTP tus and SFTP mixed, against one real ``eftgw serve``.

The gateway runs as shipped: embedded default (SQLite + filesystem store in a temporary data dir), HTTPS
with its self-signed certificate, SFTP with its own host key. Customers are several cases, each with its
bearer token (HTTP) and its temporary SFTP account (public key), as real customers would be: no limit of
the gateway is raised or turned off.

Each run, in this order, so the single streams and the mix see the same machine:

1. ``single_http``: one tus upload by aiohttp (creation, then the whole file in one PATCH).
2. ``single_sftp``: one OpenSSH ``sftp -b`` ``put`` (default cipher, chacha20-poly1305).
3. ``mix``: ``--uploads`` uploads at once, ``--sftp-share`` of them by ``sftp`` processes, the rest by
   aiohttp in a separate client process.

All three are timed alike. An upload's clock runs from its client's start to the gateway's acknowledgement
of its last byte: for HTTP from the start of the request (TCP connection, TLS handshake, token check, the
tus creation ``POST``, then the ``PATCH``) to its ``204``; for SFTP from the start of the ``sftp`` process
(connection, key exchange, public-key authentication, open, writes, close) to the process's exit. What is
before the start (the HTTP client process's start and reading of the file) is outside every clock. A
phase's throughput is all its bytes over the time from the signal that starts its uploads to the end of the
last one (``aggregate_MBps``); ``http_MBps`` and ``sftp_MBps`` are those of each side's bytes over the time
to the end of that side's last upload. Times are ``time.perf_counter()``, the machine's monotonic clock,
the same in the client processes. So a single stream of 64 MiB (a fraction of a second) carries its
connection setup as each upload of the mix does.

Every upload is ``--size-mib`` MiB of random data with a distinct 32-byte tail, and its SHA-256 is checked
against the gateway's record of the file (``GET /api/v1/cases/{id}/files``). During every phase a prober
sends tus ``HEAD`` requests (one at a time, a 50 ms pause between) on unfinished uploads of its own, as a
resuming client would, and reports their latency. The gateway's resident memory (its process and any
children) is sampled from /proc every 50 ms in a thread, and a timeline (``bench/timeline.py``) every
250 ms: per second of the phase, the MB the gateway read from its HTTPS and its SFTP sockets, how many
connections of each it read from, the bytes left in their receive queues, the uploads still running, the
machine's CPU use (% of all cores) and the gateway's (% of one core). The gateway's CPU seconds per GiB
are those of each phase. ``mix_stretches`` sums each mix's timeline over the stretch while HTTP and SFTP
uploads both run and the tail after one side finished.

``--compare-tree DIR`` also starts a node from the code of another eftgw checkout (e.g.
``git worktree add /tmp/base main``), as the first: each phase runs on one node then the other, the order
swapped every run, so a change and its base are measured under the same load; ``compared`` holds that
node's summary and ``alternation`` the mixes side by side.

    .venv/bin/python bench/mix_100.py [--uploads 100] [--size-mib 64] [--sftp-share 0.5] [--cases 10]
                                      [--runs 3] [--compare-tree DIR] [--gateway-env NAME=VALUE]

Prints JSON (MB/s are 10^6 bytes per second; medians over the runs) and writes
``bench/results/mix_100.json``. Targets (issue 15): no errors, aggregate >= the better single stream,
peak RSS <= 400 MiB. Needs openssh-client (``scripts/install-test-deps-sftp``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from yarl import URL  # noqa: E402

from bench.harness import TreeRss, load_average, mib  # noqa: E402
from bench.sftp_throughput import known_hosts_line, ssh_options  # noqa: E402
from bench.timeline import TICK, Timeline, tree_cpu_ticks  # noqa: E402
from tests.support import GatewayProcess, http_session, tus_headers  # noqa: E402

BLOCK = 1024 * 1024
TAIL = 32
CIPHER = "chacha20-poly1305@openssh.com"
RSS_TARGET_MIB = 400
PATCH_HEADERS = {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}


@dataclass
class Customer:
    case_id: str
    token: str
    username: str
    probe_url: str = ""


@dataclass
class Job:
    kind: str  # "http" or "sftp"
    customer: Customer
    name: str
    tail: bytes
    local: Path | None = None  # the file ``sftp`` puts
    started: float = 0.0  # time.perf_counter() (CLOCK_MONOTONIC: the same clock in every process)
    ended: float = 0.0
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Bench:
    node: GatewayProcess
    customers: list[Customer]
    work: Path
    body: bytes
    body_path: Path
    base_hash: Any
    key: Path
    known_hosts: Path
    rss: TreeRss
    label: str = "eftgw"
    errors: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.node.proc is not None
        return int(self.node.proc.pid)

    def expected(self, tail: bytes) -> str:
        digest = self.base_hash.copy()
        digest.update(tail)
        return str(digest.hexdigest())

    @property
    def size(self) -> int:
        return len(self.body) + TAIL


# The HTTP client process -------------------------------------------------------------------------------


def http_worker() -> None:
    """``--http-worker``: read the jobs (one JSON line), say ``ready``, wait for ``go``, PATCH them all at
    once and print one JSON line of results. A process of its own, so the prober's latencies are not the
    client's event loop being busy."""
    spec = json.loads(sys.stdin.readline())
    asyncio.run(http_uploads(spec["jobs"], memoryview(Path(spec["body"]).read_bytes())))


async def http_uploads(jobs: list[dict[str, str]], body: memoryview) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=600)
    async with http_session(timeout=timeout) as session:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        async def one(job: dict[str, str]) -> dict[str, Any]:
            tail = bytes.fromhex(job["tail"])

            async def chunks() -> Any:
                for offset in range(0, len(body), BLOCK):
                    yield body[offset : offset + BLOCK]
                yield tail

            length = str(len(body) + len(tail))
            started = time.perf_counter()
            error = None
            try:
                # The upload's clock: connection (TLS) and creation, then the body, until the 204.
                meta = "filename " + base64.b64encode(job["name"].encode()).decode()
                headers = tus_headers(job["token"], Upload_Length=length, Upload_Metadata=meta)
                async with session.post(job["create"], headers=headers) as resp:
                    if resp.status != 201:
                        error = f"POST {resp.status}: {(await resp.text())[:300]}"
                    url = str(resp.url.join(URL(resp.headers.get("Location", ""))))
                if error is None:
                    headers = tus_headers(
                        job["token"], **{k.replace("-", "_"): v for k, v in PATCH_HEADERS.items()}
                    )
                    headers["Content-Length"] = length
                    async with session.patch(url, data=chunks(), headers=headers) as resp:
                        text = await resp.text()
                        error = None if resp.status == 204 else f"PATCH {resp.status}: {text[:300]}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                error = f"upload failed: {exc!r}"
            return {"started": started, "ended": time.perf_counter(), "error": error}

        results = await asyncio.gather(*(one(job) for job in jobs))
    print(json.dumps(results), flush=True)


# Setting up ---------------------------------------------------------------------------------------------


async def create_sized_upload(session: aiohttp.ClientSession, bench: Bench, c: Customer, name: str) -> str:
    meta = "filename " + base64.b64encode(name.encode()).decode()
    headers = tus_headers(c.token, Upload_Length=str(bench.size), Upload_Metadata=meta)
    async with session.post(f"{bench.node.url}/api/v1/cases/{c.case_id}/uploads", headers=headers) as resp:
        if resp.status != 201:
            raise RuntimeError(f"creating an upload: {resp.status} {await resp.text()}")
        return resp.headers["Location"]


def setup_customers(node: GatewayProcess, count: int, key: Path) -> list[Customer]:
    """Open ``count`` cases, each with a customer token and an SFTP account with ``key``: in one process
    beside the running node, as ``eftgw case open`` / ``token`` / ``sftp-account create`` do one by one."""
    from eftgw.cli import OPERATOR, with_gateway
    from eftgw.gateway import Gateway
    from eftgw.model import Role

    customers: list[Customer] = []

    async def action(gw: Gateway) -> int:
        for i in range(count):
            case_id = f"MIX-{i + 1:03d}"
            await gw.cases.open(OPERATOR, case_id)
            user = f"customer{i + 1}"
            token = gw.signer.mint(role=Role.CUSTOMER, user=user, case_id=case_id, ttl=12 * 3600)
            issued = await gw.accounts.create(OPERATOR, case_id, authorized_keys=[key_text])
            customers.append(Customer(case_id, token, issued.account.username))
        return 0

    key_text = Path(f"{key}.pub").read_text()
    asyncio.run(with_gateway(node.settings(), action))
    return customers


async def make_probes(bench: Bench) -> None:
    """One unfinished upload per customer, 1 MiB in: what the prober's HEADs ask about."""
    async with http_session() as session:
        for c in bench.customers:
            url = await create_sized_upload(session, bench, c, "probe.bin")
            headers = tus_headers(c.token, Content_Type="application/offset+octet-stream", Upload_Offset="0")
            async with session.patch(url, data=bench.body[:BLOCK], headers=headers) as resp:
                assert resp.status == 204, await resp.text()
            c.probe_url = url


# One phase ----------------------------------------------------------------------------------------------


async def probe_heads(bench: Bench, stop: asyncio.Event, latencies: list[float], errors: list[str]) -> None:
    """HEAD the customers' probe uploads in turn, one at a time, until ``stop``."""
    connector = aiohttp.TCPConnector(ssl=False, limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        i = 0
        while not stop.is_set():
            c = bench.customers[i % len(bench.customers)]
            i += 1
            started = time.perf_counter()
            try:
                async with session.head(c.probe_url, headers=tus_headers(c.token)) as resp:
                    if resp.status != 200 or resp.headers.get("Upload-Offset") != str(BLOCK):
                        errors.append(f"HEAD {resp.status} offset {resp.headers.get('Upload-Offset')}")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                errors.append(f"HEAD failed: {exc!r}")
            latencies.append(time.perf_counter() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)


async def run_sftp(bench: Bench, job: Job) -> None:
    """One ``sftp -b`` put; its clock runs from the start of the process (connection, key exchange,
    authentication, open, the writes, close) until it exits."""
    assert job.local is not None
    batch = bench.work / f"batch-{job.name}"
    batch.write_text(f"put {job.local} {job.name}\n")
    args = [*ssh_options(bench.key, bench.known_hosts, bench.node.sftp_port, CIPHER)]
    args += ["-b", str(batch), f"{job.customer.username}@127.0.0.1"]
    job.started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, stderr = await proc.communicate()
    job.ended = time.perf_counter()
    batch.unlink(missing_ok=True)
    if proc.returncode != 0:
        job.error = (
            f"sftp {job.name}: exit {proc.returncode}: {stderr.decode(errors='replace').strip()[:300]}"
        )


async def run_http(bench: Bench, jobs: list[Job], ready: asyncio.Event, go: asyncio.Event) -> None:
    spec = {
        "body": str(bench.body_path),
        "jobs": [
            {
                "create": f"{bench.node.url}/api/v1/cases/{j.customer.case_id}/uploads",
                "name": j.name,
                "token": j.customer.token,
                "tail": j.tail.hex(),
            }
            for j in jobs
        ],
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--http-worker",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=1 << 24,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(spec).encode() + b"\n")
    await proc.stdin.drain()
    if (line := await proc.stdout.readline()).strip() != b"ready":
        raise RuntimeError(f"HTTP client did not start: {line!r}")
    ready.set()
    await go.wait()
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    results = json.loads(await proc.stdout.readline())
    await proc.wait()
    for job, result in zip(jobs, results, strict=True):
        job.started, job.ended, job.error = result["started"], result["ended"], result["error"]


async def phase(bench: Bench, jobs: list[Job]) -> dict[str, Any]:
    """Run ``jobs`` all at once; throughput, memory, CPU, HEAD latency, timeline and errors of the phase."""
    http_jobs = [j for j in jobs if j.kind == "http"]
    sftp_jobs = [j for j in jobs if j.kind == "sftp"]
    ready, go, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    http_task = asyncio.create_task(run_http(bench, http_jobs, ready, go)) if http_jobs else None
    if http_task is not None:
        # The HTTP client reads the file and imports aiohttp before the clock starts.
        await asyncio.wait(
            [http_task, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if http_task.done():
            await http_task  # it failed to start: say why
    bench.rss.phase()
    load_before = load_average()
    heads: list[float] = []
    head_errors: list[str] = []
    prober = asyncio.create_task(probe_heads(bench, stop, heads, head_errors))
    timeline = Timeline(bench.pid, {"http": bench.node.port, "sftp": bench.node.sftp_port}).start()
    cpu_before = tree_cpu_ticks(bench.pid)
    t0 = time.perf_counter()
    go.set()
    sftp_tasks = [asyncio.create_task(run_sftp(bench, j)) for j in sftp_jobs]
    await asyncio.gather(*sftp_tasks, *([http_task] if http_task else []))
    cpu = (tree_cpu_ticks(bench.pid) - cpu_before) / TICK
    end = max(j.ended for j in jobs)
    elapsed = end - t0
    stop.set()
    await prober
    timeline.stop()
    peak = bench.rss.phase()
    load_after = load_average()
    errors = [j.error for j in jobs if j.error] + head_errors
    errors += await verify(bench, [j for j in jobs if not j.error])
    await remove_files(bench, jobs)  # the next phase starts with the disk as this one did
    total = bench.size * len(jobs)

    def rate(kind: str) -> float | None:
        done = [j for j in jobs if j.kind == kind]
        if not done:
            return None
        return round(bench.size * len(done) / (max(j.ended for j in done) - t0) / 1e6, 1)

    ms = sorted(x * 1000 for x in heads)
    return {
        "uploads": len(jobs),
        "http": len(http_jobs),
        "sftp": len(sftp_jobs),
        "seconds": round(elapsed, 3),
        "aggregate_MBps": round(total / elapsed / 1e6, 1),
        "http_MBps": rate("http"),
        "sftp_MBps": rate("sftp"),
        "last_http_done_s": round(max(j.ended for j in http_jobs) - t0, 2) if http_jobs else None,
        "last_sftp_done_s": round(max(j.ended for j in sftp_jobs) - t0, 2) if sftp_jobs else None,
        "slowest_upload_s": round(max(j.seconds for j in jobs), 2),
        "fastest_upload_s": round(min(j.seconds for j in jobs), 2),
        "gateway_cpu_s": round(cpu, 2),
        "gateway_cpu_s_per_GiB": round(cpu / (total / 2**30), 2),
        "rss_peak_MiB": mib(peak),
        "rss_every_5s_MiB": bench.rss.profile(t0, end),
        "head": {
            "count": len(ms),
            "median_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1) if ms else None,
            "max_ms": round(ms[-1], 1) if ms else None,
        },
        "errors": errors,
        "load_before": load_before,
        "load_after": load_after,
        "timeline": timeline.seconds(t0, [(j.started, j.ended) for j in jobs]),
    }


async def verify(bench: Bench, jobs: list[Job]) -> list[str]:
    """Every finished upload is a file whose SHA-256 (the gateway's record) is that of what was sent."""
    by_case: dict[str, dict[str, str]] = {}
    async with http_session() as session:
        for c in {j.customer.case_id: j.customer for j in jobs}.values():
            records: dict[str, str] = {}
            cursor: str | None = None
            while True:
                query = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
                async with session.get(
                    f"{bench.node.url}/api/v1/cases/{c.case_id}/files",
                    params=query,
                    headers={"Authorization": f"Bearer {c.token}"},
                ) as resp:
                    resp.raise_for_status()
                    records.update({r["name"]: r["sha256"] for r in await resp.json()})
                    cursor = resp.headers.get("Eftgw-Next-Cursor")
                if not cursor:
                    break
            by_case[c.case_id] = records
    errors = []
    for job in jobs:
        got = by_case[job.customer.case_id].get(job.name)
        if got is None:
            errors.append(f"{job.kind} {job.name}: no file recorded")
        elif got != bench.expected(job.tail):
            errors.append(f"{job.kind} {job.name}: SHA-256 {got} is not that of what was sent")
    return errors


async def remove_files(bench: Bench, jobs: list[Job]) -> None:
    """Delete the phase's files (each customer deletes its own, as the API lets it): three runs of 100
    uploads of 64 MiB would otherwise need 19 GiB of disk, and a full disk fails uploads that are not slow."""
    async with http_session() as session:
        for c in {j.customer.case_id: j.customer for j in jobs}.values():
            auth = {"Authorization": f"Bearer {c.token}"}
            names = {j.name for j in jobs if j.customer.case_id == c.case_id}
            url = f"{bench.node.url}/api/v1/cases/{c.case_id}/files"
            async with session.get(url, params={"limit": "1000"}, headers=auth) as resp:
                resp.raise_for_status()
                ids = [r["id"] for r in await resp.json() if r["name"] in names]
            for file_id in ids:
                async with session.delete(f"{url}/{file_id}", headers=auth) as resp:
                    resp.raise_for_status()


# The run ------------------------------------------------------------------------------------------------


def sftp_file(bench: Bench, slot: int) -> tuple[Path, bytes]:
    """The local file ``sftp`` puts for slot ``slot`` (made once): the body and its own tail."""
    tail = f"sftp-slot-{slot}".encode().ljust(TAIL, b".")
    path = bench.work / f"sftp-{slot}.bin"
    if not path.exists():
        with open(path, "wb") as out:
            out.write(bench.body)
            out.write(tail)
    return path, tail


def jobs_for(bench: Bench, run: int, label: str, http: int, sftp: int) -> list[Job]:
    jobs = []
    for i in range(http):
        c = bench.customers[i % len(bench.customers)]
        tail = f"http-{run}-{label}-{i}".encode().ljust(TAIL, b".")
        jobs.append(Job("http", c, f"r{run}-{label}-http-{i}.bin", tail))
    for i in range(sftp):
        c = bench.customers[i % len(bench.customers)]
        local, tail = sftp_file(bench, i)
        jobs.append(Job("sftp", c, f"r{run}-{label}-sftp-{i}.bin", tail, local=local))
    return jobs


def start_node(args: argparse.Namespace, work: Path, label: str, root: Path) -> GatewayProcess:
    """A node running the code of the eftgw tree ``root``, its data in ``work/data-<label>``; started in
    ``root``, since ``python -m`` puts the working directory ahead of ``PYTHONPATH``."""
    extra = dict(item.split("=", 1) for item in args.gateway_env)
    env = {"EFTGW_LOG_LEVEL": "WARNING", **extra}
    return GatewayProcess(work / f"data-{label.replace('/', '_')}", env=env, tree=root).start()


def run_bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    body = os.urandom(args.size_mib * BLOCK - TAIL)
    body_path = work / "body.bin"
    body_path.write_bytes(body)
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    targets = [("eftgw", ROOT)]
    if args.compare_tree is not None:
        targets.append((f"eftgw@{args.compare_tree}", args.compare_tree.resolve()))
    benches: list[Bench] = []
    try:
        for label, root in targets:
            node = start_node(args, work, label, root)
            assert node.proc is not None
            known = work / f"known_hosts-{len(benches)}"
            known.write_text(
                known_hosts_line(node.sftp_port, node.data_dir / "ssh" / "ssh_host_ed25519_key.pub")
            )
            customers = setup_customers(node, args.cases, key)
            rss = TreeRss(node.proc.pid).start()
            benches.append(
                Bench(node, customers, work, body, body_path, hashlib.sha256(body), key, known, rss, label)
            )
        sftp_count = round(args.uploads * args.sftp_share)
        for slot in range(max(sftp_count, 1)):
            sftp_file(benches[0], slot)  # made before any clock starts, shared by the nodes
        runs = asyncio.run(run_phases(benches, args.runs, args.uploads - sftp_count, sftp_count))
        for bench in benches:
            bench.rss.stop()
        logs = {b.label: b.node.log_path.read_text(errors="replace") for b in benches}
    finally:
        for bench in benches:
            bench.node.stop()
    results = [summarize(args, runs[b.label], b.rss, logs[b.label]) for b in benches]
    result = results[0]
    if len(results) > 1:
        result["compared"] = {"target": benches[1].label, **results[1]}
        result["alternation"] = [
            {
                "run": i + 1,
                **{f"mix_MBps {b.label}": runs[b.label]["mix"][i]["aggregate_MBps"] for b in benches},
                **{f"rss_peak_MiB {b.label}": runs[b.label]["mix"][i]["rss_peak_MiB"] for b in benches},
                "load_before": runs[benches[0].label]["mix"][i]["load_before"],
            }
            for i in range(args.runs)
        ]
    return result


Runs = dict[str, list[dict[str, Any]]]


async def run_phases(benches: list[Bench], count: int, http: int, sftp: int) -> dict[str, Runs]:
    """``count`` runs of: one HTTP stream, one SFTP stream, the mix; with several nodes each phase runs on
    each node in turn, the order swapped from one run to the next."""
    for bench in benches:
        await make_probes(bench)
    runs: dict[str, Runs] = {b.label: {"single_http": [], "single_sftp": [], "mix": []} for b in benches}
    for run in range(count):
        order = benches if run % 2 == 0 else benches[::-1]
        for name, h, s in (("single_http", 1, 0), ("single_sftp", 0, 1), ("mix", http, sftp)):
            for bench in order:
                result = await phase(bench, jobs_for(bench, run, name.split("_")[0], h, s))
                runs[bench.label][name].append(result)
                print(
                    f"run {run + 1} {name} {bench.label}: {result['aggregate_MBps']} MB/s"
                    f" (http {result['http_MBps']}, sftp {result['sftp_MBps']}), {result['seconds']} s,"
                    f" RSS {result['rss_peak_MiB']} MiB, CPU {result['gateway_cpu_s_per_GiB']} s/GiB,"
                    f" errors {len(result['errors'])}, load {result['load_before'][0]}",
                    file=sys.stderr,
                    flush=True,
                )
    return runs


def digest(result: dict[str, Any]) -> dict[str, Any]:
    """A mix's timeline in two stretches: while HTTP uploads run, and after the last one (SFTP only, or the
    reverse): their length, the mean MB/s the gateway read from each side, the machine's CPU use (% of all
    cores) and the gateway's (% of one core)."""
    split = min(x for x in (result["last_http_done_s"], result["last_sftp_done_s"]) if x is not None)
    stretches: dict[str, Any] = {}
    for name, rows in (
        ("both", [r for r in result["timeline"] if r["s"] <= split]),
        ("tail", [r for r in result["timeline"] if r["s"] > split + 1]),
    ):
        if not rows:
            continue
        stretches[name] = {
            "seconds": len(rows),
            **{
                key: round(statistics.mean(r[key] for r in rows if r[key] is not None), 1)
                for key in ("http_MBps", "sftp_MBps", "sftp_queue_MiB", "cpu_machine_pct", "cpu_gateway_pct")
            },
            "running_at_start": rows[0]["running"],
        }
    return stretches


def summarize(
    args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], rss: TreeRss, log_text: str
) -> dict[str, Any]:
    def med(name: str, key: str) -> float | None:
        values = [r[key] for r in runs[name] if r[key] is not None]
        return round(statistics.median(values), 1) if values else None

    single_http, single_sftp = med("single_http", "aggregate_MBps"), med("single_sftp", "aggregate_MBps")
    mix = med("mix", "aggregate_MBps")
    best_single = max(single_http, single_sftp)
    errors = [e for phase_runs in runs.values() for r in phase_runs for e in r["errors"]]
    log_problems = [line for line in log_text.splitlines() if " ERROR " in line or "Traceback" in line]
    peak = max(r["rss_peak_MiB"] for phase_runs in runs.values() for r in phase_runs)
    return {
        "config": {
            "uploads": args.uploads,
            "size_MiB": args.size_mib,
            "sftp_share": args.sftp_share,
            "cases": args.cases,
            "runs": args.runs,
            "cpus": os.cpu_count(),
            "cipher": CIPHER,
            "backend": "sqlite + filesystem, TLS on",
            "gateway_env": args.gateway_env,
        },
        "single_http_MBps": single_http,
        "single_sftp_MBps": single_sftp,
        "mix_aggregate_MBps": mix,
        "mix_http_MBps": med("mix", "http_MBps"),
        "mix_sftp_MBps": med("mix", "sftp_MBps"),
        "ratio_mix_vs_best_single": round(mix / best_single, 2),
        "ratio_mix_vs_single_http": round(mix / single_http, 2),
        "ratio_mix_vs_single_sftp": round(mix / single_sftp, 2),
        "gateway_cpu_s_per_GiB": {name: med(name, "gateway_cpu_s_per_GiB") for name in runs},
        "mix_stretches": [digest(r) for r in runs["mix"]],
        "rss_idle_MiB": mib(rss.idle),
        "rss_peak_MiB": peak,
        "rss_samples": rss.samples,
        "mix_head_ms": {
            key: round(statistics.median(r["head"][key] for r in runs["mix"]), 1)
            for key in ("median_ms", "p99_ms", "max_ms")
        },
        "idle_head_ms": runs["single_http"][-1]["head"],
        "errors": len(errors),
        "first_errors": errors[:10],
        "gateway_log_errors": len(log_problems),
        "first_gateway_log_errors": log_problems[:5],
        "targets": {
            "no_errors": not errors and not log_problems,
            "aggregate_at_least_single": mix >= best_single,
            f"rss_at_most_{RSS_TARGET_MIB}_MiB": peak <= RSS_TARGET_MIB,
        },
        "runs": runs,
    }


def main() -> int:
    if sys.argv[1:] == ["--http-worker"]:
        http_worker()
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--sftp-share", type=float, default=0.5)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--gateway-env", action="append", default=[], metavar="NAME=VALUE", help="environment of the node"
    )
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="also run a node of this eftgw checkout (eftgw@DIR), its phases alternating with this one's",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (data dir, gateway log)")
    args = parser.parse_args()
    if shutil.which("sftp") is None:
        print("missing sftp: run scripts/install-test-deps-sftp", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="eftgw-mix-"))
    try:
        result = run_bench(args, work)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "mix_100.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
