"""Benchmark: the start-up of an admin command, ``python -m eftgw case show C-1`` (tests spawn it many times).

Each run is a fresh interpreter on a data dir whose schema is current, as in the tests. With ``--compare
DIR`` (another checkout of eftgw, e.g. ``git worktree add /tmp/old <commit>``) the two checkouts run
alternately, each on a data dir of its own, so a shared machine's noise falls on both alike. Reported per
checkout: the median and all values of wall time and of CPU time (user + system of the child, which load
disturbs far less than wall time), and the load average before and after.

    .venv/bin/python bench/cli_startup.py [--runs 7] [--compare /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(checkout: Path, data_dir: Path, *args: str) -> tuple[float, float]:
    """Wall and CPU seconds of one ``python -m eftgw ARGS`` of ``checkout``."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "EFTGW_DATA_DIR": str(data_dir)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "eftgw", *args], cwd=checkout, env=env, check=True, capture_output=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--compare", type=Path, help="another eftgw checkout, run alternately with this one")
    args = parser.parse_args()
    checkouts = {"this": ROOT}
    if args.compare:
        checkouts["compare"] = args.compare.resolve()
    results: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in checkouts}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="eftgw-cli-bench-") as scratch:
        dirs = {name: Path(scratch) / name for name in checkouts}
        for name, checkout in checkouts.items():
            run(checkout, dirs[name], "case", "open", "C-1")  # creates and migrates the database
        for _ in range(args.runs):
            for name, checkout in checkouts.items():
                wall, cpu = run(checkout, dirs[name], "case", "show", "C-1")
                results[name]["wall"].append(round(wall, 3))
                results[name]["cpu"].append(round(cpu, 3))
    report = {
        "command": "python -m eftgw case show C-1",
        "runs": args.runs,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "checkouts": {
            name: {
                "path": str(checkouts[name]),
                "median_wall_s": statistics.median(values["wall"]),
                "median_cpu_s": statistics.median(values["cpu"]),
                **values,
            }
            for name, values in results.items()
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
