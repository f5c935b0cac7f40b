"""Browser upload throughput: one file through the File Transfer Client in headless Chromium, on loopback.

A real ``eftgw serve`` process (embedded backend: SQLite + local directory, HTTPS) and Debian's Chromium; the
page does all it does for a customer (chunks read and SHA-256'd in workers, ``Upload-Checksum`` on each
PATCH, the whole file's SHA-256 compared with the gateway's at the end).

Chromium is driven over the bare DevTools protocol (Page, DOM and Runtime only), not Playwright: Playwright
turns on network instrumentation that copies every request body to its driver, which alone caps uploads at
about 20 MB/s here, so it would measure Playwright instead of the page.

Measured: from handing the file to the page until the gateway acknowledged the last byte ("upload"), and
until the page showed the file as verified ("verified": upload + local SHA-256 + comparison), and the CPU
seconds Chromium's processes (browser, renderer with the page's workers, network service) used meanwhile.
MB = 10^6 bytes.

    .venv/bin/python bench/browser_upload.py [--size-mib 1024] [--runs 2] [--port 24443]

Needs scripts/install-test-deps-web; runs scripts/build-web-client first (``--no-build`` measures whatever
``web-client/dist`` holds), so the page measured is the one the sources describe. Results also go to
bench/results/browser_upload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import GatewayProcess  # noqa: E402
from tests.web.client import CHROMIUM, CHROMIUM_ARGS, MiB, random_file  # noqa: E402

ROW_STATE = "(document.querySelector('.transfer-list > li')?.dataset.state ?? '')"
DIST = ROOT / "web-client" / "dist"


def client_build(build: bool = True) -> dict[str, Any]:
    """Build the page from the sources unless ``build`` is false (scripts/build-web-client: nothing to do when
    it is up to date), and say which build the gateway serves: its stamp and its bundles' names.

    A benchmark of a stale ``web-client/dist`` measures old code: the quiet run of 30 November measured the
    page as built that morning (@noble/hashes over a second read of the file), not the code it described.
    """
    if build:
        subprocess.run([str(ROOT / "scripts" / "build-web-client")], check=True, stdout=subprocess.DEVNULL)
    stamp = DIST / ".build-stamp"
    return {
        "stamp": stamp.read_text().strip() if stamp.exists() else None,
        "bundles": sorted(p.name for p in (DIST / "assets").glob("*.js")),
        "built_now": build,
    }


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by process ``root`` and its live descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(entry)] = int(fields[1])
        used[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0.0)
        todo.extend(child for child, of in parent.items() if of == pid)
    return total


def _process_kind(pid: int) -> str:
    """Chromium's name for a process's role, from its command line (browser, renderer, network, gpu...)."""
    try:
        # Chromium rewrites its children's command lines into one string (setproctitle).
        args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
    except OSError:
        return "gone"
    kind, sub = "browser", ""
    for arg in args:
        if arg.startswith(b"--type="):
            kind = arg[7:].decode()
        elif arg.startswith(b"--utility-sub-type="):
            sub = arg.decode().rsplit(".", 1)[-1]
    return f"{kind}/{sub}" if sub else kind


def tree_cpu_breakdown(root: int) -> dict[str, float]:
    """CPU seconds used so far by each thread of ``root`` and its live descendants, keyed by ``kind:thread``
    (the process's role, the thread's name: ``renderer:DedicatedWorker``, ``utility/NetworkService:...``).
    Threads of one name in one kind of process are summed; ``:tid`` keeps each worker thread apart."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parent[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(child for child, of in parent.items() if of == pid)
    used: dict[str, float] = {}
    for pid in pids:
        kind = _process_kind(pid)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                    name = stat[stat.index("(") + 1 : stat.rindex(")")]
                    fields = stat[stat.rindex(")") + 2 :].split()
                    seconds = (int(fields[11]) + int(fields[12])) / tick
                    key = f"{kind}:{name}" + (f":{tid}" if name == "DedicatedWorker" else "")
                    used[key] = used.get(key, 0.0) + seconds
    return used


def cpu_difference(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """``after - before`` per key, largest first, without the keys that used under 0.05 s."""
    spent = {key: after[key] - before.get(key, 0.0) for key in after}
    return {k: round(v, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= 0.05}


class DevTools:
    """The few DevTools protocol calls the benchmark needs, on one page target (``pid``: the browser's)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, pid: int) -> None:
        self.ws = ws
        self.pid = pid
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=60)
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, within: float, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(interval)
        raise TimeoutError(f"not true within {within}s: {expression}")


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[DevTools]:
    proc = await asyncio.create_subprocess_exec(
        *[CHROMIUM, *CHROMIUM_ARGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevTools(ws, proc.pid)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)


async def chromium_version() -> str:
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--version", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    return out.decode().strip()


async def page_upload(
    proc: GatewayProcess, url: str, case_id: str, source: Path, profile: Path
) -> dict[str, Any]:
    """Upload ``source`` through the page served at ``url`` (the gateway's own, or a proxy in front of it);
    done when the page shows it verified. Times from handing the file over: to the last acknowledged byte
    (the row leaves uploading) and to the verified state."""
    launch = proc.cli("token", case_id, "--role", "customer", "--user", "bench", "--launch").stdout.strip()
    async with chromium(profile) as devtools:
        await devtools.call("Page.navigate", url=f"{url}/launch#{launch}")
        await devtools.wait_for("!!document.querySelector('#case-title')", within=60)
        document = await devtools.call("DOM.getDocument")
        node = await devtools.call(
            "DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#file-input"
        )
        cpu_before = tree_cpu_seconds(devtools.pid)
        threads_before = tree_cpu_breakdown(devtools.pid)
        started = time.monotonic()
        await devtools.call("DOM.setFileInputFiles", files=[str(source)], nodeId=node["nodeId"])
        await devtools.wait_for(f"['verifying', 'done', 'failed'].includes({ROW_STATE})", within=3600)
        uploaded = time.monotonic()
        await devtools.wait_for(f"{ROW_STATE} === 'done' || {ROW_STATE} === 'failed'", within=3600)
        verified = time.monotonic()
        cpu = tree_cpu_seconds(devtools.pid) - cpu_before
        threads = cpu_difference(threads_before, tree_cpu_breakdown(devtools.pid))
        state = await devtools.evaluate(ROW_STATE)
        shown = await devtools.evaluate("document.querySelector('.transfer-hash code')?.textContent ?? ''")
    if state != "done":
        raise RuntimeError(f"the upload ended in state {state!r}")
    return {
        "upload_seconds": uploaded - started,
        "verified_seconds": verified - started,
        "sha256": shown,
        "client_cpu_seconds": cpu,
        "client_cpu_by_thread": threads,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--port", type=int, default=24443)
    parser.add_argument("--no-build", action="store_true", help="measure web-client/dist as it is")
    args = parser.parse_args()
    build = client_build(not args.no_build)

    with tempfile.TemporaryDirectory(prefix="eftgw-bench-") as tmp:
        work = Path(tmp)
        source = random_file(work / "upload.bin", args.size_mib * MiB)
        size = source.stat().st_size
        proc = GatewayProcess(work / "gw", port=args.port).start()
        results: list[dict[str, Any]] = []
        try:
            for run in range(args.runs):
                case_id = f"BENCH-{run + 1}"
                proc.cli("case", "open", case_id)
                result: dict[str, Any] = dict(
                    await page_upload(proc, proc.url, case_id, source, work / f"profile-{run}")
                )
                result["upload_mb_per_s"] = round(size / result["upload_seconds"] / 1e6, 1)
                result["verified_mb_per_s"] = round(size / result["verified_seconds"] / 1e6, 1)
                results.append(result)
                print(
                    f"run {run + 1}: {size / MiB:.0f} MiB uploaded in {result['upload_seconds']:.1f} s = "
                    f"{result['upload_mb_per_s']:.0f} MB/s; verified (SHA-256 {result['sha256'][:12]}…) "
                    f"after "
                    f"{result['verified_seconds']:.1f} s = {result['verified_mb_per_s']:.0f} MB/s",
                    flush=True,
                )
        finally:
            proc.stop()
    best = max(results, key=lambda r: r["upload_mb_per_s"])
    summary = {
        "bench": "browser_upload",
        "size_bytes": size,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "chromium": await chromium_version(),
        "client_build": build,
        "runs": results,
        "best_upload_mb_per_s": best["upload_mb_per_s"],
    }
    out = ROOT / "bench" / "results" / "browser_upload.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"best: {best['upload_mb_per_s']} MB/s for {size / MiB:.0f} MiB; details in {out}")


if __name__ == "__main__":
    asyncio.run(main())
