"""A timeline of a benchmark phase: per second, the bytes a gateway read per listening port, the machine's and
the gateway's CPU.

:class:`Timeline` samples in a thread of its own, every ``interval`` seconds:

- ``ss -tinH`` on the gateway's server-side sockets of each named port: per connection the bytes the kernel
  received (``bytes_received``) less those still waiting in its receive queue (``Recv-Q``), i.e. the bytes
  the gateway *read*, and that queue itself (bytes a paused or busy connection left in the kernel);
- ``/proc/stat``: the machine's busy and total CPU ticks (all cores);
- the gateway's CPU ticks (user + system) from ``/proc/<pid>/stat`` of its process tree.

A connection's bytes count from the first sample that sees it; one that ends between two samples loses what
it read since the last (at most ``interval`` of its throughput), so the per-second figures are a view of the
phase's shape, not its total (the bench's totals come from the uploads' own clocks).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import descendants

TICK = os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of all cores since boot (``/proc/stat``: idle and iowait are not busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - fields[3] - fields[4], total


def tree_cpu_ticks(pid: int) -> int:
    """User + system ticks of ``pid`` and its living descendants."""
    ticks = 0
    for one in descendants(pid):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks


def socket_reads(ports: dict[str, int]) -> dict[str, dict[str, tuple[int, int]]]:
    """Per port name: {peer address: (bytes read by the server, bytes in its receive queue)}."""
    by_port = {port: name for name, port in ports.items()}
    found: dict[str, dict[str, tuple[int, int]]] = {name: {} for name in ports}
    selector = " or ".join(f"sport = :{port}" for port in ports.values())
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( {selector} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    lines = out.splitlines()
    for head, info in zip(lines[::2], lines[1::2], strict=False):
        parts = head.split()
        if len(parts) < 4:
            continue
        recv_q, local, peer = int(parts[0]), parts[2], parts[3]
        name = by_port.get(int(local.rsplit(":", 1)[1]))
        if name is None:
            continue
        received = 0
        for item in info.split():
            if item.startswith("bytes_received:"):
                received = int(item.split(":", 1)[1])
        found[name][peer] = (received - recv_q, recv_q)
    return found


class Timeline:
    """Samples a gateway every ``interval`` seconds from :meth:`start` to :meth:`stop`; :meth:`seconds` sums
    the samples per second of the phase."""

    def __init__(self, pid: int, ports: dict[str, int], interval: float = 0.25) -> None:
        self.pid = pid
        self.ports = ports
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)

    def start(self) -> Timeline:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            busy, total = machine_ticks()
            self.samples.append(
                {
                    "t": time.perf_counter(),
                    "busy": busy,
                    "total": total,
                    "gateway": tree_cpu_ticks(self.pid),
                    "sockets": socket_reads(self.ports),
                }
            )
            self._stop.wait(self.interval)

    def seconds(self, t0: float, running: list[tuple[float, float]]) -> list[dict[str, Any]]:
        """One row per second from ``t0``: MB read per port, the receive queues' peak (MiB), the connections
        the gateway read from in that second per port (``<port>_moving``), uploads running (of
        ``running``'s (start, end) pairs, at the second's end), the machine's CPU use (% of all cores) and
        the gateway's (% of one core)."""
        rows: list[dict[str, Any]] = []
        last: dict[str, dict[str, int]] = {name: {} for name in self.ports}
        previous = None
        for sample in self.samples:
            slot = int((sample["t"] - t0) // 1)
            read = {name: 0 for name in self.ports}
            moving = {name: set() for name in self.ports}
            queued = {name: 0 for name in self.ports}
            for name, conns in sample["sockets"].items():
                for peer, (done, queue) in conns.items():
                    before = last[name].get(peer)
                    if before is not None and done >= before:
                        read[name] += done - before
                        if done > before:
                            moving[name].add(peer)
                    last[name][peer] = done
                    queued[name] += queue
            if previous is not None and slot >= 0:
                while len(rows) <= slot:
                    second = len(rows) + 1
                    rows.append(
                        {
                            "s": second,
                            **{f"{name}_MBps": 0.0 for name in self.ports},
                            **{f"{name}_queue_MiB": 0.0 for name in self.ports},
                            **{f"{name}_moving": set() for name in self.ports},
                            "running": sum(1 for a, b in running if a <= t0 + second and b > t0 + second),
                            "_busy": 0,
                            "_total": 0,
                            "_gateway": 0,
                            "_wall": 0.0,
                        }
                    )
                row = rows[slot]
                for name in self.ports:
                    row[f"{name}_MBps"] += read[name] / 1e6
                    row[f"{name}_queue_MiB"] = max(row[f"{name}_queue_MiB"], queued[name] / 2**20)
                    row[f"{name}_moving"] |= moving[name]
                row["_busy"] += sample["busy"] - previous["busy"]
                row["_total"] += sample["total"] - previous["total"]
                row["_gateway"] += sample["gateway"] - previous["gateway"]
                row["_wall"] += sample["t"] - previous["t"]
            previous = sample
        for row in rows:
            busy, total, gateway, wall = (row.pop(k) for k in ("_busy", "_total", "_gateway", "_wall"))
            row["cpu_machine_pct"] = round(100 * busy / total) if total else None
            row["cpu_gateway_pct"] = round(100 * gateway / TICK / wall) if wall else None
            for name in self.ports:
                row[f"{name}_MBps"] = round(row[f"{name}_MBps"], 1)
                row[f"{name}_queue_MiB"] = round(row[f"{name}_queue_MiB"], 1)
                row[f"{name}_moving"] = len(row[f"{name}_moving"])
        return rows
