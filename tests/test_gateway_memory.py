"""A started gateway keeps freed upload buffers for the next ones, whatever its store: a body's chunks are
freed a block (or an S3 part) at a time once written, and with glibc's defaults each such free could hand the
memory back to the kernel, so that the next chunks fault every page in again (see ``keep_freed_buffers``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = textwrap.dedent(
    """
    import asyncio, resource, sys
    from pathlib import Path
    from eftgw.config import Settings
    from eftgw.gateway import Gateway

    async def start_and_close(budget: int) -> None:
        gateway = Gateway.build(Settings(data_dir=Path(sys.argv[1]), http_port=0, upload_memory=budget))
        await gateway.start()
        await gateway.close()

    if sys.argv[2] != "skip":
        asyncio.run(start_and_close(int(sys.argv[2])))
    bodies = int(sys.argv[3])

    def one_burst() -> None:
        # ``bodies`` 16 MiB bodies as connections receive them, 256 KiB at a time, each with one block of
        # 1 MiB held back, freed together at the end (as parts of uploads running at once are)
        kept = []
        for _ in range(bodies):
            held = [b"\\x01" * (256 * 1024) for _ in range(4)]
            for _ in range(15):
                chunks = [b"\\x01" * (256 * 1024) for _ in range(4)]  # every page written, as received
                held, chunks = chunks, held
                kept.append(chunks)
            kept.append(held)
        del kept

    one_burst()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        one_burst()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


MiB = 1024 * 1024


def faults(root: Path, budget: int | None, bodies: int = 1) -> int:
    """Page faults of four bursts of ``bodies`` 16 MiB bodies, after a gateway with the upload budget
    ``budget`` started in the process (``None``: no gateway)."""
    mode = "skip" if budget is None else str(budget)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(root), mode, str(bodies)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return int(out.stdout)


def test_a_process_whose_gateway_started_reuses_freed_body_buffers(tmp_path: Path) -> None:
    """In a fresh process, 64 MiB received as 256 KiB chunks and freed a block at a time, after the gateway
    started (on the embedded default, the filesystem store), takes almost no page faults (the freed memory
    serves the next chunks); the same process without starting the gateway takes thousands (glibc hands each
    freed block back to the kernel)."""
    tuned = faults(tmp_path / "a", 512 * MiB)
    default = faults(tmp_path / "b", None)
    assert tuned < 1000, (tuned, default)
    assert default > 4 * tuned + 2000, (tuned, default)


def test_the_freed_buffers_kept_follow_the_nodes_upload_budget(tmp_path: Path) -> None:
    """Eight uploads at once free their buffers together (128 MiB here, as eight S3 parts of 16 MiB): a
    gateway with the default budget (512 MiB) serves the next burst from that memory, where one with a budget
    of 16 MiB keeps only 64 MiB and faults most pages in again (tens of thousands)."""
    budget = faults(tmp_path / "a", 512 * MiB, bodies=8)
    small = faults(tmp_path / "b", 16 * MiB, bodies=8)
    assert budget < 2000, (budget, small)
    assert small > 4 * budget + 8000, (budget, small)
