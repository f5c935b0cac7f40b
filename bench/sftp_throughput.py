"""Upload throughput of OpenSSH's ``sftp`` client: the eftgw SFTP gateway against OpenSSH's own sftp-server on
the same machine and disk, side by side in one run.

The same client (``sftp -b``, ``put`` of one file), for each cipher (default: OpenSSH's default
chacha20-poly1305@openssh.com and aes128-gcm@openssh.com), ``--rounds`` rounds, the targets alternating within
each round:

- ``eftgw``: the gateway's SFTP service (core, SQLite, filesystem store in a temporary data dir), one process
  for the whole run. Every part it stores is fsync'ed and hashed (SHA-256 and xxh128) before ``stat``
  acknowledges its size, and the ``put`` ends when the gateway has answered the ``CLOSE`` (the file finished).
- ``openssh``: OpenSSH's sftp-server behind a throwaway ``sshd`` on a loopback port (its own config, host key
  and authorized key; nothing of the system's sshd is touched), plain ``put`` (no fsync). This is the peer
  the ratio is taken against.
- ``openssh put -f`` (with ``--fsync-peer``): the same, asking the server to fsync the file at the end.
- ``sftp-server (no SSH)`` (with ``--local``): ``sftp -D /usr/lib/openssh/sftp-server``, the file-system
  ceiling without any SSH transport or encryption.

Usage: ``python bench/sftp_throughput.py [--size-mib 1024] [--rounds 3] [--cipher C ...] [--fsync-peer]
[--local] [--warmup] [--compare-tree DIR] [--callgrind] [--py-spy FILE]``. Prints one JSON document: per
cipher and target the MB/s of each round (10^6 bytes per second), the medians, the ratio eftgw/openssh of the
medians, the load average (1 min) before each put, the server side's CPU seconds per GiB (the gateway's and
its event loop thread's; sshd's with its session and sftp-server), and the gateway's peak RSS (``VmHWM``);
also written to ``bench/results/sftp_throughput.json``.
``--compare-tree DIR`` adds a second gateway target, ``eftgw@DIR``: the gateway of another copy of eftgw's
tree (e.g. ``git archive main | tar -x -C /tmp/main``), started the same way from that tree's code, its puts
alternating with the others in each round: a change and its base measured side by side under the same load.
``--warmup`` puts the file once to each target before the recorded rounds (the first put into a fresh
gateway process costs more CPU than the next ones).
``--callgrind`` runs each gateway under valgrind's callgrind, collecting only during its puts, and records
the instructions (millions per GiB) its event loop thread and its other threads executed: counts that the
load of other work on the machine does not move (repeated runs of one tree agree within about 1%), to compare
a change with its base (``--compare-tree``) on a busy machine. The gateways' channel packets are capped at
32 KiB then (what OpenSSH's client sends when the server keeps up; a gateway slowed down by valgrind would
otherwise get fewer, larger packets), OpenSSH's server is not measured, and the rates and CPU seconds are
valgrind's, not the gateway's. Use a small ``--size-mib`` (64): a put runs about 50 times slower.
``--py-spy FILE`` runs the gateway under ``py-spy record`` (``pip install py-spy``) and writes its samples as
collapsed stacks (flamegraph input).
Needs openssh-client and openssh-server (``scripts/install-test-deps-sftp``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CALLGRIND_PACKET = 32 * 1024  # --callgrind: the gateways' largest channel packet (see above)
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


def serve_gateway(data_dir: Path, port: int, max_packet: int = 0) -> None:
    """``--serve``: run a gateway node with SFTP only (what ``eftgw serve`` runs next to HTTPS), from the
    eftgw tree ``EFTGW_BENCH_ROOT`` (default: this one); ``max_packet``: the channels' largest packet, if
    not 0."""
    sys.path.insert(0, os.environ.get("EFTGW_BENCH_ROOT", str(ROOT)))
    from eftgw.config import Settings
    from eftgw.gateway import Gateway
    from eftgw.sftp import SftpService

    async def main() -> None:
        gateway = Gateway.build(Settings(data_dir=data_dir, sftp_port=port, host="127.0.0.1"))
        await gateway.start()
        service = SftpService(gateway, **({"max_packet": max_packet} if max_packet else {}))
        await service.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@contextmanager
def process(args: list[str], env: dict[str, str] | None = None, ready: str | None = None) -> Iterator[int]:
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
            while line.startswith("py-spy>") or line == "\n":  # a profiler's banner
                line = proc.stdout.readline()
            if line.strip() != ready:
                raise RuntimeError(f"{args[0]} did not start: {line!r}")
        yield proc.pid
    finally:
        if Path(args[0]).name == "py-spy":
            # py-spy writes its profile when its target ends: stop the target, then py-spy
            with contextlib.suppress(OSError, ValueError):
                for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                    os.kill(int(child), signal.SIGTERM)
            proc.send_signal(signal.SIGINT)
        else:
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


def peak_rss_mib(pid: int) -> float | None:
    """The peak resident set (``VmHWM``) of ``pid`` and its children's largest, in MiB (Linux)."""
    peaks = []
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for one in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
    return round(max(peaks), 1) if peaks else None


def cpu_seconds(pid: int, *, children: bool, thread: int | None = None) -> float:
    """CPU time (user + system) ``pid`` used so far, with its waited-for descendants' if ``children``; only
    that of its thread ``thread`` if given (the main thread's id is the pid)."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class Gateway:
    """A running gateway node: its process, SFTP port, the bench account's user name and its host key."""

    def __init__(
        self, pid: int, port: int, username: str, known_hosts: Path, callgrind_out: Path | None = None
    ) -> None:
        self.pid = pid
        self.port = port
        self.username = username
        self.known_hosts = known_hosts
        self.callgrind_out = callgrind_out  # callgrind's output file (dumps are <it>.<n>-<thread>)
        self.dumps = 0

    def instructions(self, put: Callable[[], float]) -> tuple[float, float, float]:
        """Run ``put()`` with callgrind collecting (``--callgrind``); return its seconds and the instructions
        the event loop thread and the other threads executed meanwhile."""
        assert self.callgrind_out is not None
        subprocess.run(["callgrind_control", "-i", "on", str(self.pid)], check=True, capture_output=True)
        seconds = put()
        for command in ("-i", "off"), ("-d",):
            subprocess.run(["callgrind_control", *command, str(self.pid)], check=True, capture_output=True)
        self.dumps += 1
        loop = others = 0.0
        deadline = time.monotonic() + 60
        files: list[Path] = []
        while not files and time.monotonic() < deadline:
            files = sorted(self.callgrind_out.parent.glob(f"{self.callgrind_out.name}.{self.dumps}-*"))
            time.sleep(0.1)
        for dump in files:
            totals = [line for line in dump.read_text().splitlines() if line.startswith("totals:")]
            count = int(totals[0].split()[1]) if totals else 0
            if dump.name.endswith("-01"):  # the first thread: the event loop
                loop += count
            else:
                others += count
        return seconds, loop, others


class Bench:
    """The file, the client key, running gateways and a running sshd; :meth:`put` times one upload."""

    def __init__(
        self,
        work: Path,
        size_mib: int,
        stack: contextlib.ExitStack,
        py_spy: Path | None,
        compare_tree: Path | None = None,
        callgrind: bool = False,
    ) -> None:
        self.work = work
        self.callgrind = callgrind
        self.data = work / "upload.bin"
        with open(self.data, "wb") as out:
            for _ in range(size_mib):
                out.write(os.urandom(1024 * 1024))
        self.size = self.data.stat().st_size
        self.key = work / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        self.gateways = {"eftgw": self._start_gateway(stack, py_spy, ROOT, "gateway")}
        if compare_tree is not None:
            self.gateways[f"eftgw@{compare_tree}"] = self._start_gateway(
                stack, None, compare_tree, "compared"
            )
        self.gateway_pid = self.gateways["eftgw"].pid
        self.last_instructions: tuple[int, int] | None = None  # --callgrind: of the last put, M per GiB
        self._start_sshd(stack)
        self.count = 0

    def _start_gateway(
        self, stack: contextlib.ExitStack, py_spy: Path | None, root: Path, name: str
    ) -> Gateway:
        """A gateway node running the code of the eftgw tree ``root``, its data in ``work/name``."""
        env = {**os.environ, "PYTHONPATH": str(root)}
        gw_data, gw_port = self.work / name, free_port(22600 if name == "gateway" else 22650)
        cli_env = {**env, "EFTGW_DATA_DIR": str(gw_data), "EFTGW_SFTP_PORT": str(gw_port)}
        subprocess.run([sys.executable, "-m", "eftgw", "case", "open", "BENCH-1"], env=cli_env, check=True,
                       capture_output=True)  # fmt: skip
        created = subprocess.run(
            [sys.executable, "-m", "eftgw", "sftp-account", "create", "BENCH-1",
             "--authorized-key", f"@{self.key}.pub"],
            env=cli_env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        username = json.loads(created.stdout)["username"]
        # this file's --serve, importing eftgw from ``root``: the same node setup for every tree
        env["EFTGW_BENCH_ROOT"] = str(root)
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(gw_data), str(gw_port)]
        callgrind_out = None
        if self.callgrind:
            callgrind_out = self.work / f"{name}.callgrind"
            command = [
                "valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                f"--callgrind-out-file={callgrind_out}", *command, str(CALLGRIND_PACKET),
            ]  # fmt: skip
        if py_spy is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            command = [
                spy,
                "record",
                "--rate",
                "200",
                "--format",
                "raw",
                "--threads",
                "-o",
                str(py_spy),
                "--",
                *command,
            ]
        pid = stack.enter_context(process(command, env=env, ready="ready"))
        if py_spy is not None:  # measure the gateway, not py-spy
            pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
        known = self.work / f"known_{name}"
        known.write_text(known_hosts_line(gw_port, gw_data / "ssh" / "ssh_host_ed25519_key.pub"))
        return Gateway(pid, gw_port, username, known, callgrind_out)

    def _start_sshd(self, stack: contextlib.ExitStack) -> None:
        sshd_dir, self.sshd_port = self.work / "sshd", free_port(22700)
        sshd_dir.mkdir()
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sshd_dir / "host_key")], check=True
        )
        (sshd_dir / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        os.chmod(sshd_dir / "authorized_keys", 0o600)
        self.user = (
            os.environ.get("USER")
            or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        )
        config = sshd_dir / "sshd_config"
        config.write_text(
            f"Port {self.sshd_port}\nListenAddress 127.0.0.1\nHostKey {sshd_dir / 'host_key'}\n"
            f"PidFile {sshd_dir / 'sshd.pid'}\nAuthorizedKeysFile {sshd_dir / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PermitRootLogin prohibit-password\nAllowUsers {self.user}\n"
            f"Subsystem sftp {SFTP_SERVER}\nLogLevel ERROR\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self.target = self.work / "openssh-target"
        self.target.mkdir()
        self.sshd_pid = stack.enter_context(process([str(SSHD), "-D", "-e", "-f", str(config)]))
        wait_for_port(self.sshd_port)
        self.known_sshd = self.work / "known_sshd"
        self.known_sshd.write_text(known_hosts_line(self.sshd_port, sshd_dir / "host_key.pub"))

    def put(self, target: str, cipher: str) -> tuple[float, float, float | None, float | None]:
        """Upload the file once to ``target``; return MB/s, the 1-minute load average just before, the
        server side's CPU seconds per GiB (the gateway process; sshd with its session and sftp-server) and,
        for the gateway, its event loop thread's CPU seconds per GiB."""
        self.count += 1
        load = os.getloadavg()[0]
        server = {name: (gateway.pid, False) for name, gateway in self.gateways.items()}
        server["openssh"] = (self.sshd_pid, True)
        server["openssh put -f"] = server["openssh"]
        pid, children = server.get(target, (0, False))
        gateway = self.gateways.get(target)
        cpu_before = cpu_seconds(pid, children=children) if pid else 0.0
        loop_before = cpu_seconds(pid, children=False, thread=pid) if gateway else 0.0
        if gateway is not None:
            args = [
                *ssh_options(self.key, gateway.known_hosts, gateway.port, cipher),
                f"{gateway.username}@127.0.0.1",
            ]
            name = f"run{self.count}.bin"
            batch = f"put {self.data} {name}\nrm {name}\n"
            if self.callgrind:
                seconds, loop_ir, other_ir = gateway.instructions(lambda: timed_put(args, batch, self.work))
                per_gib_m = 2**30 / self.size / 1e6
                self.last_instructions = (round(loop_ir * per_gib_m), round(other_ir * per_gib_m))
            else:
                seconds = timed_put(args, batch, self.work)
        elif target in ("openssh", "openssh put -f"):
            args = [*ssh_options(self.key, self.known_sshd, self.sshd_port, cipher), f"{self.user}@127.0.0.1"]
            flag = "-f " if target == "openssh put -f" else ""
            seconds = timed_put(args, f"put {flag}{self.data} {self.target}/up.bin\n", self.work)
        else:
            local = ["sftp", "-q", "-D", str(SFTP_SERVER)]
            seconds = timed_put(local, f"put {self.data} {self.target}/local.bin\n", self.work)
        if children:  # the session's sshd and sftp-server count once sshd has reaped them
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}/task/{pid}/children").read_text().strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        cpu = cpu_seconds(pid, children=children) - cpu_before if pid else None
        loop = cpu_seconds(pid, children=False, thread=pid) - loop_before if gateway else None
        per_gib = 2**30 / self.size
        return (
            self.size / seconds / 1e6,
            load,
            None if cpu is None else round(cpu * per_gib, 2),
            None if loop is None else round(loop * per_gib, 2),
        )


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    targets = ["eftgw"] if args.callgrind else ["eftgw", "openssh"]
    if args.compare_tree is not None:
        targets.insert(1, f"eftgw@{args.compare_tree}")
    if args.fsync_peer:
        targets.append("openssh put -f")
    if args.local:
        targets.append("sftp-server (no SSH)")
    record: dict[str, Any] = {
        "size_mib": args.size_mib,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ciphers": {},
    }
    with contextlib.ExitStack() as stack:
        bench = Bench(work, args.size_mib, stack, args.py_spy, args.compare_tree, args.callgrind)
        for cipher in args.cipher:
            rates: dict[str, list[float]] = {t: [] for t in targets}
            cpu: dict[str, list[float | None]] = {t: [] for t in targets}
            loop_cpu: dict[str, list[float | None]] = {t: [] for t in targets if t.startswith("eftgw")}
            loads: list[float] = []
            # --callgrind: millions of instructions per GiB, [event loop thread, other threads] per put
            instructions: dict[str, list[tuple[int, int] | None]] = {t: [] for t in loop_cpu}
            if args.warmup:  # a first put into a fresh process costs more: one unrecorded put per target
                for target in targets:
                    bench.put(target, cipher)
            for round_no in range(args.rounds):
                # alternate which target goes first, so neither always runs on a warmer machine
                order = targets if round_no % 2 == 0 else [*targets[1:], targets[0]]
                for target in order:
                    mbs, load, cpu_per_gib, loop_per_gib = bench.put(target, cipher)
                    rates[target].append(round(mbs, 1))
                    cpu[target].append(cpu_per_gib)
                    if target in loop_cpu:
                        loop_cpu[target].append(loop_per_gib)
                        instructions[target].append(bench.last_instructions)
                    loads.append(load)
                    loop_note = f", event loop thread {loop_per_gib} s/GiB" if target in loop_cpu else ""
                    if args.callgrind and target in loop_cpu:
                        loop_note += (
                            f", instructions (M/GiB, event loop / other threads) {bench.last_instructions}"
                        )
                    print(f"{cipher} round {round_no + 1} {target}: {mbs:.1f} MB/s, server CPU "
                          f"{cpu_per_gib} s/GiB{loop_note} (load {load:.2f})",
                          file=sys.stderr, flush=True)  # fmt: skip
            medians = {t: round(statistics.median(r), 1) for t, r in rates.items()}
            record["ciphers"][cipher] = {
                "MBps": rates,
                "median_MBps": medians,
                "ratio_eftgw_to_openssh": round(medians["eftgw"] / medians["openssh"], 3)
                if "openssh" in medians
                else None,
                "server_cpu_s_per_GiB": cpu,
                "gateway_event_loop_cpu_s_per_GiB": loop_cpu.pop("eftgw"),
                "load_avg_1m": {"min": round(min(loads), 2), "max": round(max(loads), 2)},
            }
            if args.callgrind:
                record["ciphers"][cipher]["callgrind_M_instructions_per_GiB_loop_other"] = instructions
            for target, compared_loop in loop_cpu.items():  # --compare-tree
                if "openssh" in medians:
                    record["ciphers"][cipher][f"ratio_{target}_to_openssh"] = round(
                        medians[target] / medians["openssh"], 3
                    )
                record["ciphers"][cipher][f"event_loop_cpu_s_per_GiB {target}"] = compared_loop
        record["gateway_peak_rss_mib"] = peak_rss_mib(bench.gateway_pid)
    record["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return record


def main() -> int:
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--serve":
        serve_gateway(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) == 5 else 0)
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cipher", action="append", help="repeatable; default: chacha20-poly1305 and aes128-gcm"
    )
    parser.add_argument("--fsync-peer", action="store_true", help="also measure OpenSSH with put -f")
    parser.add_argument("--local", action="store_true", help="also measure sftp -D (no SSH)")
    parser.add_argument("--warmup", action="store_true", help="one unrecorded put per target first")
    parser.add_argument(
        "--compare-tree", type=Path, help="also measure the gateway of this eftgw checkout (eftgw@DIR)"
    )
    parser.add_argument(
        "--callgrind", action="store_true", help="count the gateways' instructions per thread (valgrind)"
    )
    parser.add_argument("--py-spy", type=Path, help="profile the gateway with py-spy into this file")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "sftp_throughput.json")
    args = parser.parse_args()
    args.cipher = args.cipher or ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"]
    tools = ["sftp", "ssh-keygen", str(SSHD), str(SFTP_SERVER)]
    if args.callgrind:
        tools += ["valgrind", "callgrind_control"]
    for tool in tools:
        if shutil.which(tool) is None and not Path(tool).exists():
            print(f"missing {tool}: run scripts/install-test-deps-sftp", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="eftgw-sftp-bench-"))
    try:
        record = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(record, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
