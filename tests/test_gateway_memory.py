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

    async def start_and_close() -> None:
        gateway = Gateway.build(Settings(data_dir=Path(sys.argv[1]), http_port=0))
        await gateway.start()
        await gateway.close()

    if sys.argv[2] == "start":
        asyncio.run(start_and_close())

    def one_body() -> None:
        # a 16 MiB body as a connection receives it, 256 KiB at a time, with one block of 1 MiB held back
        held = [b"\\x01" * (256 * 1024) for _ in range(4)]
        for _ in range(15):
            chunks = [b"\\x01" * (256 * 1024) for _ in range(4)]  # every page written, as received data is
            held, chunks = chunks, held
            del chunks
        del held

    one_body()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        one_body()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def faults(root: Path, mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(root), mode], capture_output=True, text=True, check=True, timeout=60
    )
    return int(out.stdout)


def test_a_process_whose_gateway_started_reuses_freed_body_buffers(tmp_path: Path) -> None:
    """In a fresh process, 64 MiB received as 256 KiB chunks and freed a block at a time, after the gateway
    started (on the embedded default, the filesystem store), takes almost no page faults (the freed memory
    serves the next chunks); the same process without starting the gateway takes thousands (glibc hands each
    freed block back to the kernel)."""
    tuned = faults(tmp_path / "a", "start")
    default = faults(tmp_path / "b", "skip")
    assert tuned < 1000, (tuned, default)
    assert default > 4 * tuned + 2000, (tuned, default)
