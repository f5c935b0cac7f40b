"""Browser upload throughput: one file through the File Transfer Client in headless Chromium, on loopback.

A real ``eftgw serve`` process (embedded backend: SQLite + local directory, HTTPS) and Debian's Chromium
driven by Playwright; the page does everything it does for a customer (chunks read and SHA-256'd in workers,
``Upload-Checksum`` on every PATCH, the whole file's SHA-256 compared with the gateway's at the end).

Measured: from handing the file to the page until the gateway acknowledged the last byte (upload), and until
the page showed the file as verified (upload + local SHA-256 + comparison). Prints MB/s (10^6 bytes/s).

    .venv/bin/python bench/browser_upload.py [--size-mib 1024] [--runs 1] [--port 24443]

Needs scripts/install-test-deps-web and scripts/build-web-client first. Results also go to
bench/results/browser_upload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.async_api import async_playwright, expect  # noqa: E402

from tests.support import GatewayProcess  # noqa: E402
from tests.web.client import CHROMIUM, CHROMIUM_ARGS, MiB, ClientPage, random_file  # noqa: E402


async def one_run(proc: GatewayProcess, source: Path, case_id: str) -> dict[str, float]:
    launch = proc.cli("token", case_id, "--role", "customer", "--user", "bench", "--launch").stdout.strip()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            async with ClientPage.open(browser, proc.url) as client:
                await client.launch(launch)
                row = client.transfer(source.name)
                started = time.monotonic()
                await client.choose(source)
                await expect(row).to_have_attribute("data-state", re.compile("verifying|done"), timeout=1_800_000)
                uploaded = time.monotonic()
                await expect(row).to_have_attribute("data-state", "done", timeout=1_800_000)
                verified = time.monotonic()
                patches = [r for r in client.traffic.patches() if r.status == 204]
        finally:
            await browser.close()
    return {
        "upload_seconds": uploaded - started,
        "verified_seconds": verified - started,
        "patch_requests": len(patches),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--port", type=int, default=24443)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="eftgw-bench-") as tmp:
        work = Path(tmp)
        source = random_file(work / "upload.bin", args.size_mib * MiB)
        size = source.stat().st_size
        proc = GatewayProcess(work / "gw", port=args.port).start()
        results = []
        try:
            for run in range(args.runs):
                case_id = f"BENCH-{run + 1}"
                proc.cli("case", "open", case_id)
                result = await one_run(proc, source, case_id)
                result["upload_mb_per_s"] = size / result["upload_seconds"] / 1e6
                result["verified_mb_per_s"] = size / result["verified_seconds"] / 1e6
                results.append(result)
                print(
                    f"run {run + 1}: {size / MiB:.0f} MiB uploaded in {result['upload_seconds']:.1f} s = "
                    f"{result['upload_mb_per_s']:.0f} MB/s ({result['patch_requests']:.0f} PATCH requests); "
                    f"verified after {result['verified_seconds']:.1f} s = {result['verified_mb_per_s']:.0f} MB/s",
                    flush=True,
                )
        finally:
            proc.stop()
    best = max(results, key=lambda r: r["upload_mb_per_s"])
    summary = {
        "bench": "browser_upload",
        "size_bytes": size,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "chromium": CHROMIUM,
        "runs": results,
        "best_upload_mb_per_s": round(best["upload_mb_per_s"], 1),
    }
    out = ROOT / "bench" / "results" / "browser_upload.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"best: {summary['best_upload_mb_per_s']} MB/s for {size / MiB:.0f} MiB; details in {out}")


if __name__ == "__main__":
    asyncio.run(main())
