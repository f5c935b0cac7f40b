"""Benchmark: webhook delivery latency of 1,000 integration events, from a real ``eftgw serve`` process on the
embedded default (SQLite + local directory) to a real receiver that verifies every signature.

The portal's calls (``POST /api/v1/integration/cases/{case}/close|reopen``) on ``--cases`` cases make the
events, paced at ``--rate`` events per second (0: as fast as the calls go); each call reports one event.
Latency is from the event's ``timestamp`` (when the gateway committed the change) to its arrival at the
receiver (both clocks are this machine's). Printed beside it, as the reference measured in the same run:
the round trip of the portal call that made the change. The load average is printed with the figures.

    .venv/bin/python bench/events_latency.py [--events 1000] [--cases 100] [--rate 100] [--poll 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import GatewayProcess, http_session
from tests.webhook_receiver import Receiver


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


async def drive(node: GatewayProcess, token: str, cases: int, rounds: int, rate: float) -> list[float]:
    """Close and reopen each case ``rounds`` times in all, interleaved across cases, paced at ``rate``; the
    round trip of each call."""
    trips: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with http_session() as session:

        async def call(case: str, action: str) -> None:
            started = time.perf_counter()
            url = f"{node.url}/api/v1/integration/cases/{case}/{action}"
            async with session.post(url, headers=headers, json={}) as resp:
                assert resp.status == 200, await resp.text()
            trips.append(time.perf_counter() - started)

        for j in range(cases):
            await call(f"B-{j}", "open")
        trips.clear()
        start = time.perf_counter()

        async def one_case(j: int) -> None:
            for r in range(rounds):
                if rate > 0:
                    due = start + (r * cases + j) / rate
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                await call(f"B-{j}", "close" if r % 2 == 0 else "reopen")

        await asyncio.gather(*(one_case(j) for j in range(cases)))
    return trips


async def run(events: int, cases: int, rate: float, poll: float, data_dir: Path) -> dict[str, object]:
    rounds = events // cases
    receiver = Receiver().start()
    node = GatewayProcess(data_dir, receiver.env(EFTGW_WEBHOOK_POLL_INTERVAL=str(poll))).start()
    try:
        token = node.cli("token", "-", "--role", "service", "--user", "bench").stdout.strip()
        load_before = os.getloadavg()
        trips = await drive(node, token, cases, rounds, rate)
        with contextlib.suppress(AssertionError):  # reported below as fewer delivered than made
            await receiver.until(lambda r: len(r.delivered()) >= rounds * cases, within=120)
        load_after = os.getloadavg()
    finally:
        node.stop()
        receiver.stop()
    assert receiver.unverified == [], receiver.unverified
    first: dict[str, float] = {}
    made: dict[str, float] = {}
    for got in receiver.delivered():
        if got.id not in first:
            first[got.id] = got.at
            stamp = dt.datetime.fromisoformat(got.payload["timestamp"].replace("Z", "+00:00"))
            made[got.id] = stamp.timestamp()
    latencies = [first[i] - made[i] for i in first]
    return {
        "events": rounds * cases,
        "delivered": len(first),
        "duplicates": len(receiver.delivered()) - len(first),
        "cases": cases,
        "rate_per_s": rate or "unpaced",
        "poll_interval_s": poll,
        "delivery_latency": summary(latencies),
        "portal_call_round_trip": summary(trips),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second; 0: unpaced")
    parser.add_argument("--poll", type=float, default=0.2, help="EFTGW_WEBHOOK_POLL_INTERVAL (the default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eftgw-bench-events-") as tmp:
        result = asyncio.run(run(args.events, args.cases, args.rate, args.poll, Path(tmp) / "gw"))
    print(json.dumps(result, indent=2))
    delivered = result["delivered"]
    if delivered != result["events"]:
        sys.exit(f"only {delivered} of {result['events']} events arrived")


if __name__ == "__main__":
    main()
