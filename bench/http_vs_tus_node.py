"""Benchmark: one file in one PATCH by curl, plain HTTP, to eftgw and to @tus/server with its file store.

Both run side by side in one run on the same disk, alternating (eftgw, then the peer, each round), so load
from elsewhere on the machine hits both alike. eftgw runs as a real ``eftgw serve`` (``EFTGW_TLS=off``,
SQLite, the filesystem store) and hashes SHA-256 + xxh128 and fsyncs before it acknowledges; the peer is
``bench/node/tus-server.mjs`` (@tus/server and @tus/file-store, pinned in ``bench/node/package-lock.json``),
which does neither. Each upload is verified afterwards (eftgw: the file's SHA-256; the peer: the stored
file's size). Prints per-round MB/s (10^6 bytes per second, curl's own timing of the PATCH), the medians, the
ratio of the medians, each server's CPU seconds per GiB (user + system, all threads: what a change saves,
even on a loaded machine), the load average before and after, and eftgw's peak RSS (sampled every 20 ms), as
JSON.

    .venv/bin/python bench/http_vs_tus_node.py [--size-mib 1024] [--rounds 3] [--env EFTGW_X=y ...]

Needs Node.js >= 20.19 with npm (``npm ci`` runs in ``bench/node`` when its ``node_modules`` is missing) and
curl.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import GatewayProcess  # noqa: E402

NODE_DIR = ROOT / "bench" / "node"
MIB = 1024 * 1024
GIB = 1024 * MIB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_file(path: Path, size_mib: int) -> str:
    """Write ``size_mib`` MiB of incompressible bytes; return their SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(MIB)
    with path.open("wb") as f:
        for i in range(size_mib):
            chunk = i.to_bytes(8, "big") + block[8:]
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def curl(*args: str) -> str:
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", *args], capture_output=True, text=True, check=True
    )
    return out.stdout


def create(url: str, size: int, headers: list[str]) -> str:
    """POST a tus creation; return the upload's URL."""
    out = curl("-D", "-", "-o", "/dev/null", "-X", "POST", url, "-H", f"Upload-Length: {size}", *headers)
    for line in out.splitlines():
        if line.lower().startswith("location:"):
            location = line.split(":", 1)[1].strip()
            return location if location.startswith("http") else url.split("/api/")[0] + location
    raise RuntimeError(f"no Location in {out!r}")


def patch(url: str, path: Path, headers: list[str]) -> float:
    """Send the whole file in one PATCH; return curl's upload speed in MB/s."""
    out = curl(
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_upload} %{time_total}",
        "-X",
        "PATCH",
        url,
        "-H",
        "Upload-Offset: 0",
        "-H",
        "Content-Type: application/offset+octet-stream",
        "-H",
        "Expect:",
        *headers,
        "--upload-file",
        str(path),
    )
    status, sent, seconds = out.split()
    if status != "204":
        raise RuntimeError(f"PATCH answered {status}")
    return int(sent) / float(seconds) / 1e6


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


class PeakRss:
    """Samples a process's RSS every 20 ms in a thread while it runs."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self.idle = self.peak
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


class TusNode:
    """``node bench/node/tus-server.mjs`` on a free port, storing into ``directory``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        self.directory = directory
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["node", str(NODE_DIR / "tus-server.mjs"), str(self.port), str(directory)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "listening":
            raise RuntimeError("the tus server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def ensure_node_modules() -> None:
    if not (NODE_DIR / "node_modules" / "@tus" / "server").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True)


def run(size_mib: int, rounds: int, env: dict[str, str], work: Path) -> dict[str, object]:
    ensure_node_modules()
    size = size_mib * MIB
    source = work / "upload.bin"
    sha256 = make_file(source, size_mib)
    load_before = os.getloadavg()
    gateway = GatewayProcess(
        work / "eftgw", env={"EFTGW_TLS": "off", "EFTGW_LOG_LEVEL": "WARNING", **env}
    ).start()
    peer = TusNode(work / "tus")
    rss: PeakRss | None = None
    try:
        gateway.cli("case", "open", "BENCH-1")
        token = gateway.token("BENCH-1")
        assert gateway.proc is not None
        rss = PeakRss(gateway.proc.pid)
        ours = [f"Authorization: Bearer {token}", "Tus-Resumable: 1.0.0"]
        theirs = ["Tus-Resumable: 1.0.0"]
        base = f"http://127.0.0.1:{gateway.port}/api/v1/cases/BENCH-1/uploads"
        eftgw_mbps: list[float] = []
        peer_mbps: list[float] = []
        eftgw_cpu: list[float] = []
        peer_cpu: list[float] = []
        ours_proc, peer_proc = psutil.Process(gateway.proc.pid), psutil.Process(peer.proc.pid)
        for n in range(rounds):
            meta = f"Upload-Metadata: filename {base64.b64encode(f'r{n}.bin'.encode()).decode()}"
            header_args = [a for h in [*ours, meta] for a in ("-H", h)]
            location = create(base, size, header_args)
            cpu = cpu_seconds(ours_proc)
            eftgw_mbps.append(patch(location, source, header_args))
            eftgw_cpu.append(cpu_seconds(ours_proc) - cpu)
            peer_args = [a for h in theirs for a in ("-H", h)]
            location = create(peer.url, size, peer_args)
            cpu = cpu_seconds(peer_proc)
            peer_mbps.append(patch(location, source, peer_args))
            peer_cpu.append(cpu_seconds(peer_proc) - cpu)
            stored = peer.directory / location.rsplit("/", 1)[1]
            if stored.stat().st_size != size:
                raise RuntimeError("the peer stored a different size")
            stored.unlink()
            print(
                f"round {n + 1}: eftgw {eftgw_mbps[-1]:.0f} MB/s, @tus/server {peer_mbps[-1]:.0f} MB/s",
                file=sys.stderr,
            )
        files = json.loads(
            curl(
                f"http://127.0.0.1:{gateway.port}/api/v1/cases/BENCH-1/files",
                "-H",
                f"Authorization: Bearer {token}",
            )
        )
        if len(files) != rounds or any(f["sha256"] != sha256 or f["size"] != size for f in files):
            raise RuntimeError("eftgw stored a file with another SHA-256 or size")
    finally:
        if rss is not None:
            rss.close()
        peer.stop()
        gateway.stop()
    eftgw_median = statistics.median(eftgw_mbps)
    peer_median = statistics.median(peer_mbps)
    assert rss is not None
    return {
        "bytes": size,
        "rounds": rounds,
        "eftgw_MBps": [round(x, 1) for x in eftgw_mbps],
        "tus_node_MBps": [round(x, 1) for x in peer_mbps],
        "eftgw_median_MBps": round(eftgw_median, 1),
        "tus_node_median_MBps": round(peer_median, 1),
        "ratio": round(eftgw_median / peer_median, 3),
        "eftgw_cpu_s_per_GiB": [round(c * GIB / size, 2) for c in eftgw_cpu],
        "tus_node_cpu_s_per_GiB": [round(c * GIB / size, 2) for c in peer_cpu],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "eftgw_rss_idle_MiB": round(rss.idle / MIB, 1),
        "eftgw_rss_peak_MiB": round(rss.peak / MIB, 1),
        "eftgw_env": env,
        "sha256_verified": True,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], help="an extra EFTGW_*=value for eftgw")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    work = Path(tempfile.mkdtemp(prefix="eftgw-bench-tus-"))
    try:
        result = run(args.size_mib, args.rounds, env, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
