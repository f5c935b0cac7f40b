"""The browser page against a Python tus client: one file to the verified state, same gateway, same run.

One real ``eftgw serve`` process (embedded backend: SQLite + local directory, HTTPS). Each round uploads the
same file twice, alternating which client goes first:

- **page**: the File Transfer Client in Debian's headless Chromium, driven over the bare DevTools protocol
  (bench/browser_upload.py says why not Playwright); done when the page shows the file as verified;
- **python**: an aiohttp tus client with the page's chunking semantics: chunk sizes chosen by the page's rule
  (2 MiB first, then doubling while a chunk takes under about 3 s, up to ``MAX_CHUNK`` of
  ``web-client/src/transfer.ts``), each chunk read once, sent with ``Upload-Checksum: sha256``, and added to
  the whole file's SHA-256 (hashlib) as it is read; done when the gateway lists a file of that SHA-256 and
  size.

``--rtt-ms`` puts both clients behind a TCP proxy that delays each direction by half the round trip and holds
at most ``--window-mib`` unacknowledged per direction (a TCP window over that round trip), because this
kernel has no netem qdisc (``tc qdisc add dev lo root netem delay 25ms`` answers "Specified qdisc kind is
unknown": the kernel is built without ``CONFIG_NET_SCH_NETEM`` and has no modules to load). TLS passes
through the proxy untouched. The proxy runs in this process's event loop, beside the Python client, so with
``--rtt-ms`` the Python client's time and CPU seconds include the proxy's work; the page's do not.

    .venv/bin/python bench/browser_vs_python.py [--size-mib 1024] [--rounds 3] [--rtt-ms 0] [--window-mib 4]

Each run also counts CPU seconds (user + system, from /proc): the client's (Chromium's process tree for the
page, this process for the Python client) and the gateway's, so the JSON says what each client costs per GiB.

Prints one JSON document (medians, the page/python ratio, load averages, which build of the page) and writes
it to bench/results/browser_vs_python[-rtt<N>].json. MB = 10^6 bytes. Needs scripts/install-test-deps-web;
runs scripts/build-web-client first unless ``--no-build``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.browser_upload import chromium_version, client_build, page_upload, tree_cpu_seconds  # noqa: E402
from tests.support import GatewayProcess  # noqa: E402
from tests.web.client import MiB, random_file  # noqa: E402

TRANSFER_TS = ROOT / "web-client" / "src" / "transfer.ts"
INITIAL_CHUNK = 2 * MiB
MIN_CHUNK = 1 * MiB
TARGET_CHUNK_SECONDS = 3.0


def page_max_chunk_mib() -> int:
    """``MAX_CHUNK`` as the page was built with it (web-client/src/transfer.ts)."""
    match = re.search(r"MAX_CHUNK = (\d+) \* MiB", TRANSFER_TS.read_text())
    if match is None:
        raise RuntimeError(f"no MAX_CHUNK in {TRANSFER_TS}")
    return int(match.group(1))


def next_chunk_size(current: int, chunk: int, seconds: float, max_chunk: int) -> int:
    """The page's rule (transfer.ts ``adaptChunkSize``): about 3 s a chunk, grow one step, shrink at once."""
    if seconds <= 0 or chunk <= 0:
        return current
    wanted = chunk / seconds * TARGET_CHUNK_SECONDS
    size = MIN_CHUNK
    while size * 2 <= wanted and size < max_chunk:
        size *= 2
    return min(size, current * 2) if size > current else size


class DelayProxy:
    """TCP on loopback with a round trip of ``rtt`` seconds and at most ``window`` bytes in flight a way."""

    def __init__(self, upstream_port: int, rtt: float, window: int) -> None:
        self.upstream_port = upstream_port
        self.delay = rtt / 2
        self.window = window
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.transport.abort()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        room = asyncio.Semaphore(max(1, self.window // (64 * 1024)))  # window in 64 KiB credits

        async def deliver() -> None:
            loop = asyncio.get_running_loop()
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                sink.write(data)
                await sink.drain()
                # The window opens again when the acknowledgement would have come back: one more delay.
                loop.call_later(self.delay, room.release)
            with contextlib.suppress(OSError):
                if sink.can_write_eof():
                    sink.write_eof()

        delivering = asyncio.create_task(deliver())
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await room.acquire()
                data = await source.read(64 * 1024)
                if not data:
                    break
                queue.put_nowait((time.monotonic() + self.delay, data))
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(OSError):
            await delivering


@contextlib.asynccontextmanager
async def delay_proxy(upstream_port: int, rtt: float, window: int) -> AsyncIterator[DelayProxy]:
    proxy = DelayProxy(upstream_port, rtt, window)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def python_client(
    url: str, token: str, case_id: str, source: Path, size: int, max_chunk: int
) -> dict[str, Any]:
    """Upload ``source`` with tus (checksummed chunks), then find the gateway's file of the same SHA-256."""
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    whole = hashlib.sha256()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    connector = aiohttp.TCPConnector(ssl=False, limit=1)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as http:
        name = base64.b64encode(f"{source.name}-python".encode()).decode()
        async with http.post(
            f"{url}/api/v1/cases/{case_id}/uploads",
            headers={**auth, "Upload-Length": str(size), "Upload-Metadata": f"filename {name}"},
        ) as created:
            created.raise_for_status()
            location = created.headers["Location"]
        if location.startswith("/"):
            location = url + location
        offset, chunk_size = 0, INITIAL_CHUNK
        with source.open("rb", buffering=0) as f:
            while offset < size:
                began = time.monotonic()
                data = f.read(min(chunk_size, size - offset))
                whole.update(data)
                digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
                async with http.patch(
                    location,
                    data=data,
                    headers={
                        **auth,
                        "Upload-Offset": str(offset),
                        "Upload-Checksum": f"sha256 {digest}",
                        "Content-Type": "application/offset+octet-stream",
                    },
                ) as answer:
                    answer.raise_for_status()
                    offset = int(answer.headers["Upload-Offset"])
                chunk_size = next_chunk_size(chunk_size, len(data), time.monotonic() - began, max_chunk)
        uploaded = time.monotonic()
        sha256 = whole.hexdigest()
        async with http.get(f"{url}/api/v1/cases/{case_id}/files", headers=auth) as listed:
            files = await listed.json()
    if not any(f["sha256"] == sha256 and f["size"] == size for f in files):
        raise RuntimeError("the gateway has no file with the client's SHA-256")
    verified = time.monotonic()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    return {
        "upload_seconds": uploaded - started,
        "verified_seconds": verified - started,
        "sha256": sha256,
        "client_cpu_seconds": cpu,
    }


def summary(runs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    upload = statistics.median(r["upload_seconds"] for r in runs)
    verified = statistics.median(r["verified_seconds"] for r in runs)
    gib = size / (1024 * MiB)
    client_cpu = statistics.median(r["client_cpu_seconds"] for r in runs)
    gateway_cpu = statistics.median(r["gateway_cpu_seconds"] for r in runs)
    return {
        "median_client_cpu_s_per_gib": round(client_cpu / gib, 1),
        "median_gateway_cpu_s_per_gib": round(gateway_cpu / gib, 1),
        "median_upload_mb_per_s": round(size / upload / 1e6, 1),
        "median_verified_mb_per_s": round(size / verified / 1e6, 1),
        "median_verified_after_upload_s": round(
            statistics.median(r["verified_seconds"] - r["upload_seconds"] for r in runs), 2
        ),
        "runs": [
            {
                "upload_mb_per_s": round(size / r["upload_seconds"] / 1e6, 1),
                "verified_mb_per_s": round(size / r["verified_seconds"] / 1e6, 1),
                "load_average": r["load_average"],
            }
            for r in runs
        ],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="round trip added by a delaying proxy")
    parser.add_argument("--window-mib", type=float, default=4.0, help="bytes in flight per direction (proxy)")
    parser.add_argument(
        "--max-chunk-mib", type=int, default=page_max_chunk_mib(), help="the Python client's largest chunk"
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-build", action="store_true", help="measure web-client/dist as it is")
    args = parser.parse_args()
    build = client_build(not args.no_build)
    max_chunk = args.max_chunk_mib * MiB

    with tempfile.TemporaryDirectory(prefix="eftgw-bench-") as tmp:
        work = Path(tmp)
        source = random_file(work / "upload.bin", args.size_mib * MiB)
        expected = hashlib.sha256(source.read_bytes()).hexdigest() if args.size_mib <= 64 else None
        size = source.stat().st_size
        gw = GatewayProcess(work / "gw", port=args.port or None)
        proxy: DelayProxy | None = None
        if args.rtt_ms > 0:
            proxy = DelayProxy(gw.port, args.rtt_ms / 1000, int(args.window_mib * MiB))
            await proxy.start()
            gw.env["EFTGW_PUBLIC_URL"] = f"https://127.0.0.1:{proxy.port}"
        url = f"https://127.0.0.1:{proxy.port}" if proxy else gw.url
        gw.start()
        results: dict[str, list[dict[str, Any]]] = {"page": [], "python": []}
        try:
            for round_ in range(args.rounds):
                order = ["page", "python"] if round_ % 2 == 0 else ["python", "page"]
                for who in order:
                    case_id = f"BENCH-{who}-{round_ + 1}"
                    gw.cli("case", "open", case_id)
                    assert gw.proc is not None
                    gateway_cpu = tree_cpu_seconds(gw.proc.pid)
                    if who == "page":
                        result = await page_upload(gw, url, case_id, source, work / f"profile-{round_}")
                    else:
                        token = gw.token(case_id, "customer", "bench")
                        result = await python_client(url, token, case_id, source, size, max_chunk)
                    if expected is not None and result["sha256"] != expected:
                        raise RuntimeError(f"{who}: SHA-256 {result['sha256']} is not the file's {expected}")
                    result["gateway_cpu_seconds"] = tree_cpu_seconds(gw.proc.pid) - gateway_cpu
                    result["load_average"] = round(os.getloadavg()[0], 2)
                    results[who].append(result)
                    print(
                        f"round {round_ + 1} {who}: upload {size / result['upload_seconds'] / 1e6:.0f} MB/s, "
                        f"verified {size / result['verified_seconds'] / 1e6:.0f} MB/s "
                        f"(+{result['verified_seconds'] - result['upload_seconds']:.2f} s to verify) "
                        f"CPU s: client {result['client_cpu_seconds']:.1f}, "
                        f"gateway {result['gateway_cpu_seconds']:.1f}; "
                        f"load {result['load_average']}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            gw.stop()
            if proxy is not None:
                await proxy.close()
    digests = {r["sha256"] for runs in results.values() for r in runs}
    if len(digests) != 1:
        raise RuntimeError(f"the clients disagree on the file's SHA-256: {sorted(digests)}")
    page, python = summary(results["page"], size), summary(results["python"], size)
    report = {
        "bench": "browser_vs_python",
        "size_bytes": size,
        "rounds": args.rounds,
        "rtt_ms": args.rtt_ms,
        "window_mib": args.window_mib if args.rtt_ms > 0 else None,
        "max_chunk_mib": args.max_chunk_mib,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "chromium": await chromium_version(),
        "client_build": build,
        "page": page,
        "python": python,
        "ratio_verified": round(page["median_verified_mb_per_s"] / python["median_verified_mb_per_s"], 2),
        "ratio_upload": round(page["median_upload_mb_per_s"] / python["median_upload_mb_per_s"], 2),
    }
    suffix = f"-rtt{args.rtt_ms:g}" if args.rtt_ms > 0 else ""
    out = ROOT / "bench" / "results" / f"browser_vs_python{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
