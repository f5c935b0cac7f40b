"""Upload throughput of OpenSSH's ``sftp`` client: against the eftgw SFTP gateway and against OpenSSH's own
sftp-server on the same machine.

Three targets, the same client (``sftp -b``, ``put``), the same file, the same cipher:

- ``eftgw``: the gateway's SFTP service (core, SQLite, filesystem store in a temporary data dir). Every part
  it stores is fsync'ed and hashed (SHA-256 and xxh128) before its size is acknowledged by ``stat``.
- ``openssh``: OpenSSH's sftp-server behind a throwaway ``sshd`` on a loopback port (its own config, host key
  and authorized key; nothing of the system's sshd is touched). Measured twice: plain ``put``, which does
  not fsync, and ``put -f``, which asks the server to fsync the file at the end.
- ``sftp-server (no SSH)``: ``sftp -D /usr/lib/openssh/sftp-server``, the file-system ceiling without any
  SSH transport or encryption, for reference.

Usage: ``python bench/sftp_throughput.py [--size-mib 1024] [--runs 3] [--cipher CIPHER]`` (default cipher:
chacha20-poly1305@openssh.com, OpenSSH's default).
Prints MB/s (10^6 bytes per second; median of the runs) and writes ``bench/results/sftp_throughput.json``.
Needs openssh-client and openssh-server (``scripts/install-test-deps-sftp``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
SSHD = Path("/usr/sbin/sshd")


def free_port(start: int) -> int:
    for port in range(start, 23000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def serve_gateway(data_dir: Path, port: int) -> None:
    """``--serve``: run a gateway node with SFTP only (what ``eftgw serve`` runs next to HTTPS)."""
    sys.path.insert(0, str(ROOT))
    from eftgw.config import Settings
    from eftgw.gateway import Gateway
    from eftgw.sftp import SftpService

    async def main() -> None:
        gateway = Gateway.build(Settings(data_dir=data_dir, sftp_port=port, host="127.0.0.1"))
        await gateway.start()
        service = SftpService(gateway)
        await service.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@contextmanager
def process(args: list[str], env: dict[str, str] | None = None, ready: str | None = None) -> Iterator[None]:
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        if ready:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != ready:
                raise RuntimeError(f"{args[0]} did not start: {line!r}")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def timed_put(args: list[str], batch: str, work: Path) -> float:
    """Run ``sftp`` with a batch (the destination, if any, is the last of ``args``); return the seconds."""
    batch_file = work / "batch"
    batch_file.write_text(batch)
    command = (
        [*args[:-1], "-b", str(batch_file), args[-1]] if "@" in args[-1] else [*args, "-b", str(batch_file)]
    )
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"sftp failed: {done.stderr.strip()}")
    return elapsed


def ssh_options(key: Path, known_hosts: Path, port: int, cipher: str) -> list[str]:
    return [
        "sftp", "-q", "-i", str(key), "-c", cipher, "-P", str(port),
        "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "PreferredAuthentications=publickey", "-o", "LogLevel=ERROR",
    ]  # fmt: skip


def known_hosts_line(port: int, pub: Path) -> str:
    kind, blob = pub.read_text().split()[:2]
    return f"[127.0.0.1]:{port} {kind} {blob}\n"


def bench(size_mib: int, runs: int, cipher: str, work: Path) -> dict[str, list[float]]:
    data = work / "upload.bin"
    with open(data, "wb") as out:
        for _ in range(size_mib):
            out.write(os.urandom(1024 * 1024))
    size = data.stat().st_size
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    results: dict[str, list[float]] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    # eftgw ------------------------------------------------------------------------------------------
    gw_data, gw_port = work / "gateway", free_port(22600)
    cli_env = {**env, "EFTGW_DATA_DIR": str(gw_data), "EFTGW_SFTP_PORT": str(gw_port)}
    subprocess.run([sys.executable, "-m", "eftgw", "case", "open", "BENCH-1"], env=cli_env, check=True,
                   capture_output=True)  # fmt: skip
    created = subprocess.run(
        [sys.executable, "-m", "eftgw", "sftp-account", "create", "BENCH-1",
         "--authorized-key", f"@{key}.pub"],
        env=cli_env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    username = json.loads(created.stdout)["username"]
    with process([sys.executable, __file__, "--serve", str(gw_data), str(gw_port)], env=env, ready="ready"):
        known = work / "known_gateway"
        known.write_text(known_hosts_line(gw_port, gw_data / "ssh" / "ssh_host_ed25519_key.pub"))
        args = [*ssh_options(key, known, gw_port, cipher), f"{username}@127.0.0.1"]
        results["eftgw"] = [
            size / timed_put(args, f"put {data} run{i}.bin\nrm run{i}.bin\n", work) for i in range(runs)
        ]

    # OpenSSH's sftp-server behind a throwaway sshd ---------------------------------------------------
    sshd_dir, sshd_port = work / "sshd", free_port(22700)
    sshd_dir.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sshd_dir / "host_key")], check=True
    )
    (sshd_dir / "authorized_keys").write_text((work / "id_ed25519.pub").read_text())
    os.chmod(sshd_dir / "authorized_keys", 0o600)
    user = (
        os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    )
    config = sshd_dir / "sshd_config"
    config.write_text(
        f"Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {sshd_dir / 'host_key'}\n"
        f"PidFile {sshd_dir / 'sshd.pid'}\nAuthorizedKeysFile {sshd_dir / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PermitRootLogin prohibit-password\nAllowUsers {user}\n"
        f"Subsystem sftp {SFTP_SERVER}\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    target = work / "openssh-target"
    target.mkdir()
    with process([str(SSHD), "-D", "-e", "-f", str(config)]):
        wait_for_port(sshd_port)
        known = work / "known_sshd"
        known.write_text(known_hosts_line(sshd_port, sshd_dir / "host_key.pub"))
        args = [*ssh_options(key, known, sshd_port, cipher), f"{user}@127.0.0.1"]
        results["openssh"] = [
            size / timed_put(args, f"put {data} {target}/up.bin\n", work) for _ in range(runs)
        ]
        results["openssh (put -f: fsync)"] = [
            size / timed_put(args, f"put -f {data} {target}/up.bin\n", work) for _ in range(runs)
        ]

    # no SSH at all -------------------------------------------------------------------------------
    local = ["sftp", "-q", "-D", str(SFTP_SERVER)]
    results["sftp-server (no SSH)"] = [
        size / timed_put(local, f"put {data} {target}/local.bin\n", work) for _ in range(runs)
    ]
    return results


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve_gateway(Path(sys.argv[2]), int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cipher", default="chacha20-poly1305@openssh.com")
    args = parser.parse_args()
    for tool in ("sftp", "ssh-keygen", str(SSHD), str(SFTP_SERVER)):
        if shutil.which(tool) is None and not Path(tool).exists():
            print(f"missing {tool}: run scripts/install-test-deps-sftp", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="eftgw-sftp-bench-"))
    try:
        results = bench(args.size_mib, args.runs, args.cipher, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"OpenSSH sftp upload of {args.size_mib} MiB, cipher {args.cipher}, {args.runs} runs, "
          f"{os.cpu_count()} CPUs (MB/s = 10^6 bytes/s; median, min-max)")  # fmt: skip
    summary = {}
    for target, rates in results.items():
        mbs = [r / 1e6 for r in rates]
        summary[target] = {
            "median_MBps": round(statistics.median(mbs), 1),
            "runs_MBps": [round(m, 1) for m in mbs],
        }
        print(f"  {target:28s} {statistics.median(mbs):8.1f} MB/s   ({min(mbs):.1f}-{max(mbs):.1f})")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    record = {"size_mib": args.size_mib, "cipher": args.cipher, "cpus": os.cpu_count(), "results": summary}
    (out / "sftp_throughput.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
