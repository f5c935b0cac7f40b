"""What the benchmarks share: the memory of a process tree sampled from /proc, and the machine's load.

:class:`TreeRss` samples the resident set of a process and of all its descendants (summed) every 50 ms in a
thread of its own, so the sampling keeps its pace while the benchmark's event loop is busy driving clients.
Peaks can be read per phase (:meth:`TreeRss.phase`) and over the whole run.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from ``/proc/<pid>/task/*/children``."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def rss(pid: int) -> int:
    """Bytes resident in memory of one process (``/proc/<pid>/statm``); 0 once it has gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(pid: int) -> int:
    """Bytes resident of ``pid`` and its descendants together."""
    return sum(rss(p) for p in descendants(pid))


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class TreeRss:
    """Samples ``tree_rss(pid)`` every ``interval`` seconds in a daemon thread until :meth:`stop`."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples = 0
        self.peak = 0
        self.phase_peak = 0
        self.idle = tree_rss(pid)
        self.timeline: list[tuple[float, int]] = []  # (time.perf_counter(), bytes) of every sample
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> TreeRss:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            value = tree_rss(self.pid)
            now = time.perf_counter()
            with self._lock:
                self.timeline.append((now, value))
                self.samples += 1
                self.peak = max(self.peak, value)
                self.phase_peak = max(self.phase_peak, value)
            self._stop.wait(self.interval)

    def phase(self) -> int:
        """The peak since the previous call (or the start); starts a new phase."""
        with self._lock:
            value, self.phase_peak = self.phase_peak, tree_rss(self.pid)
        return value

    def profile(self, start: float, end: float, step: float = 5.0) -> list[float]:
        """The peak (MiB) of each ``step`` seconds from ``start`` to ``end`` (``time.perf_counter()``)."""
        with self._lock:
            samples = [(t, v) for t, v in self.timeline if start <= t <= end]
        peaks: dict[int, int] = {}
        for t, v in samples:
            slot = int((t - start) // step)
            peaks[slot] = max(peaks.get(slot, 0), v)
        return [mib(peaks[k]) for k in sorted(peaks)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def mib(value: float) -> float:
    return round(value / MIB, 1)
