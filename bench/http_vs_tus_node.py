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
        [--compare-tree DIR] [--no-tus]

``--compare-tree DIR`` (may be repeated) adds a gateway ``eftgw@DIR``: the same ``eftgw serve`` run from
another copy of eftgw (e.g. ``git worktree add --detach /tmp/base main``), in the same rounds (this tree's
gateway, the other trees', then the peer), with its own MB/s and CPU per GiB, so a change is measured against
the code before it under the same load. ``--no-tus`` leaves the peer out (gateways only).

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
        "%{http_code} %{size_upload} %{time_total}\n",
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


class Ours:
    """One gateway under test, its case open and its token minted; :meth:`send` times one upload."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway.start()
        gateway.cli("case", "open", "BENCH-1")
        token = gateway.token("BENCH-1")
        assert gateway.proc is not None
        self.proc = psutil.Process(gateway.proc.pid)
        self.rss = PeakRss(gateway.proc.pid)
        self.headers = [f"Authorization: Bearer {token}", "Tus-Resumable: 1.0.0"]
        self.base = f"http://127.0.0.1:{gateway.port}/api/v1/cases/BENCH-1/uploads"
        self.mbps: list[float] = []
        self.cpu: list[float] = []

    def send(self, n: int, source: Path, size: int) -> None:
        meta = f"Upload-Metadata: filename {base64.b64encode(f'r{n}.bin'.encode()).decode()}"
        header_args = [a for h in [*self.headers, meta] for a in ("-H", h)]
        location = create(self.base, size, header_args)
        cpu = cpu_seconds(self.proc)
        try:
            self.mbps.append(patch(location, source, header_args))
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"the PATCH failed: {exc.stdout}\n{self.gateway.log_tail()}") from exc
        self.cpu.append(cpu_seconds(self.proc) - cpu)

    def verify(self, sha256: str, size: int) -> None:
        files = json.loads(curl(self.base.replace("/uploads", "/files"), "-H", self.headers[0]))
        if len(files) != len(self.mbps) or any(f["sha256"] != sha256 or f["size"] != size for f in files):
            raise RuntimeError("eftgw stored a file with another SHA-256 or size")

    def stop(self) -> None:
        self.rss.close()
        self.gateway.stop()


def run(
    size_mib: int,
    rounds: int,
    env: dict[str, str],
    work: Path,
    compare_trees: tuple[Path, ...] = (),
    with_peer: bool = True,
) -> dict[str, object]:
    if with_peer:
        ensure_node_modules()
    size = size_mib * MIB
    source = work / "upload.bin"
    sha256 = make_file(source, size_mib)
    load_before = os.getloadavg()
    gateway_env = {"EFTGW_TLS": "off", "EFTGW_LOG_LEVEL": "WARNING", **env}
    gateways: dict[str, Ours] = {}
    peer: TusNode | None = None
    try:
        gateways["eftgw"] = Ours(GatewayProcess(work / "eftgw", env=gateway_env))
        for n, tree in enumerate(compare_trees):
            gateways[f"eftgw@{tree}"] = Ours(GatewayProcess(work / f"compared-{n}", gateway_env, tree=tree))
        peer = TusNode(work / "tus") if with_peer else None
        peer_mbps: list[float] = []
        peer_cpu: list[float] = []
        peer_proc = psutil.Process(peer.proc.pid) if peer is not None else None
        for n in range(rounds):
            for ours in gateways.values():
                ours.send(n, source, size)
            if peer is not None and peer_proc is not None:
                peer_args = [a for h in ["Tus-Resumable: 1.0.0"] for a in ("-H", h)]
                location = create(peer.url, size, peer_args)
                cpu = cpu_seconds(peer_proc)
                peer_mbps.append(patch(location, source, peer_args))
                peer_cpu.append(cpu_seconds(peer_proc) - cpu)
                stored = peer.directory / location.rsplit("/", 1)[1]
                if stored.stat().st_size != size:
                    raise RuntimeError("the peer stored a different size")
                stored.unlink()
            line = ", ".join(f"{name} {ours.mbps[-1]:.0f} MB/s" for name, ours in gateways.items())
            if peer_mbps:
                line += f", @tus/server {peer_mbps[-1]:.0f} MB/s"
            print(f"round {n + 1}: {line}", file=sys.stderr)
        for ours in gateways.values():
            ours.verify(sha256, size)
    finally:
        if peer is not None:
            peer.stop()
        for ours in gateways.values():
            ours.stop()
    mine = gateways["eftgw"]
    eftgw_median = statistics.median(mine.mbps)
    result: dict[str, object] = {
        "bytes": size,
        "rounds": rounds,
        "eftgw_MBps": [round(x, 1) for x in mine.mbps],
        "eftgw_median_MBps": round(eftgw_median, 1),
        "eftgw_cpu_s_per_GiB": [round(c * GIB / size, 2) for c in mine.cpu],
        "eftgw_median_cpu_s_per_GiB": round(statistics.median(mine.cpu) * GIB / size, 2),
    }
    if peer_mbps:
        peer_median = statistics.median(peer_mbps)
        result |= {
            "tus_node_MBps": [round(x, 1) for x in peer_mbps],
            "tus_node_median_MBps": round(peer_median, 1),
            "ratio": round(eftgw_median / peer_median, 3),
            "tus_node_cpu_s_per_GiB": [round(c * GIB / size, 2) for c in peer_cpu],
        }
    for name, ours in gateways.items():
        if name != "eftgw":
            result[name] = {
                "MBps": [round(x, 1) for x in ours.mbps],
                "median_MBps": round(statistics.median(ours.mbps), 1),
                "cpu_s_per_GiB": [round(c * GIB / size, 2) for c in ours.cpu],
                "median_cpu_s_per_GiB": round(statistics.median(ours.cpu) * GIB / size, 2),
                "rss_peak_MiB": round(ours.rss.peak / MIB, 1),
            }
    result |= {
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "eftgw_rss_idle_MiB": round(mine.rss.idle / MIB, 1),
        "eftgw_rss_peak_MiB": round(mine.rss.peak / MIB, 1),
        "eftgw_env": env,
        "sha256_verified": True,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], help="an extra EFTGW_*=value for eftgw")
    parser.add_argument(
        "--compare-tree",
        type=Path,
        action="append",
        default=[],
        help="also run this eftgw checkout's gateway",
    )
    parser.add_argument("--no-tus", action="store_true", help="leave @tus/server out")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    work = Path(tempfile.mkdtemp(prefix="eftgw-bench-tus-"))
    try:
        result = run(args.size_mib, args.rounds, env, work, tuple(args.compare_tree), not args.no_tus)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
