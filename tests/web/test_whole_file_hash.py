"""The page's whole-file SHA-256 is built from the chunks the upload sends (web-client/src/whole-file.ts).

The module is bundled with the web client's own esbuild and run by Node.js on a real file, with chunks added
as an upload sends them: in order, chunks sent twice, a resume at the gateway's offset (near, and further than
a chunk may wait), and no chunk at all. Every digest must equal ``hashlib``'s, and no byte a chunk brought may
be read from disk again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.web.axe import NODE_DIR
from tests.web.client import MiB, random_file

pytestmark = pytest.mark.once  # the page's module run by Node.js, no gateway: the backend plays no part

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "web-client"


def bundle_module(tmp_path: Path, module: str) -> Path:
    """``web-client/src/<module>.ts`` and what it imports, as one ES module for Node.js."""
    esbuild = CLIENT / "node_modules" / ".bin" / "esbuild"
    assert esbuild.exists(), "run scripts/build-web-client first (it installs the web client's npm packages)"
    bundle = tmp_path / f"{module}.mjs"
    subprocess.run(
        [
            str(esbuild),
            str(CLIENT / "src" / f"{module}.ts"),
            "--bundle",
            "--format=esm",
            "--platform=node",
            f"--outfile={bundle}",
            "--log-level=warning",
        ],
        check=True,
        cwd=CLIENT,
        timeout=120,
    )
    return bundle


def run_node(script: str, *args: str) -> Any:
    node = shutil.which("node")
    assert node, "Node.js is required (scripts/install-test-deps-web)"
    done = subprocess.run(
        [node, str(NODE_DIR / script), *args], check=True, capture_output=True, text=True, timeout=300
    )
    return json.loads(done.stdout)


def run_scenarios(tmp_path: Path, source: Path) -> list[dict[str, object]]:
    return list(run_node("whole-file-hash.mjs", str(bundle_module(tmp_path, "whole-file")), str(source)))


def test_the_whole_file_digest_comes_from_the_chunks_read_once(tmp_path: Path) -> None:
    """Each order of chunks gives the file's SHA-256; only bytes no chunk brought are read from disk, and a
    chunk's add resolves only once its bytes are hashed (what keeps the hash in step with the upload)."""
    source = random_file(tmp_path / "file.bin", 37 * MiB + 4321)
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    results = {r["name"]: r for r in run_scenarios(tmp_path, source)}

    for name in ("in order", "chunk sent again", "resumed at an offset", "resumed far", "no chunks"):
        assert results[name]["sha256"] == expected, name
    assert results["in order"]["disk_bytes"] == 0
    assert results["chunk sent again"]["disk_bytes"] == 0
    for name in ("in order", "chunk sent again", "resumed at an offset", "resumed far"):
        assert results[name]["in_step"] is True, name
    # Before the offset nothing was sent, so it is read from disk, once; the chunks after it never are.
    assert results["resumed at an offset"]["disk_bytes"] == 5 * MiB + 12345
    # Further than a chunk may wait: the first chunk is let go and read from disk with what precedes it;
    # every later chunk is hashed from memory.
    assert results["resumed far"]["disk_bytes"] == 20 * MiB + 777 + 2 * MiB
    assert results["no chunks"]["disk_bytes"] == source.stat().st_size
    assert results["file shrank"] == {"name": "file shrank", "failed": True, "finish_failed": True}


def test_a_chunk_read_ahead_is_sent_even_when_the_chunk_size_grew(tmp_path: Path) -> None:
    """The chunk read and hashed while the previous one was sent is used as it is, never read again.

    The page grows its chunk after each fast one; before, a read-ahead chunk of the old size was thrown away
    and the range read again at the new size, so each growing chunk was read twice and not overlapped.
    """
    result = run_node("chunk-source.mjs", str(bundle_module(tmp_path, "tus-adapter")))["grown"]
    reads = [(start, end) for start, end, _ in result["reads"]]
    assert all(stream == "S" for _, _, stream in result["reads"])
    assert len(reads) == len(set(reads))
    covered = sorted(reads)
    assert covered[0][0] == 0 and covered[-1][1] == 20 * MiB
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    assert [tuple(r) for r in result["sent"]] == covered


def test_the_whole_file_hash_never_lags_more_than_two_chunks(tmp_path: Path) -> None:
    """Each chunk goes to the whole-file hash right after the request took it, and the chunk after next is
    read only once the chunk sent last is hashed. With a hash slower than the network the upload waits for it
    rather than running ahead, so at most the chunk being sent and the one before it wait to be hashed (about
    three chunks' bytes held in all, and verification ends within a chunk's hashing of the last byte). The
    request gets the whole chunk as that range of the file itself (a Blob the browser's network code reads, so
    the page never copies the bytes into the request), the bytes the worker read and checksummed go to the
    whole-file hash, and the first chunk is asked for before the one read ahead, so the worker reads them in
    file order.

    Checked by the order of events (a fake request answers at once, the fake hash takes 30 ms), not by time.
    Before, the whole-file hash ran in the worker before a chunk was handed back, with the read of the next
    chunk waiting behind it, and a chunk read ahead that was hashed before the first one was asked for let the
    hash fall back to reading the file again from disk.
    """
    result = run_node("chunk-source.mjs", str(bundle_module(tmp_path, "tus-adapter")))["lag"]
    size = 7 * 2 * MiB + 1000
    events = [tuple(e) for e in result["events"]]
    chunks = [(e[1], e[2]) for e in events if e[0] == "chunk"]
    assert chunks[0] == (0, 2 * MiB) and chunks[-1][1] == size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    assert [tuple(r[:2]) for r in result["reads"]][:2] == [(0, 2 * MiB), (2 * MiB, 4 * MiB)]
    assert [e[1] for e in events if e[0] == "read"] == [start for start, _ in chunks]

    sends = [i for i, e in enumerate(events) if e[0] == "send"]
    assert len(sends) == len(chunks)
    for number, ((start, end), at) in enumerate(zip(chunks, sends, strict=True)):
        # The request got the whole chunk as the file's own range (a Blob it reads itself, not a copy).
        assert events[at][1:] == (end - start, "file-range")
        # Its bytes, as the pool read them (first byte = the chunk's number), go to the whole-file hash right
        # after the request went out.
        assert events[at + 1] == ("add", start, end - start, number)
        # Sent with at most one earlier chunk still waiting to be hashed.
        added = sum(1 for e in events[:at] if e[0] == "add")
        hashed = sum(1 for e in events[:at] if e[0] == "hashed")
        assert added - hashed <= 1, f"chunk {number} was sent with {added - hashed} chunks not hashed"
        if number > 1:
            # Read only once the chunk two before it was hashed.
            read = events.index(("read", start))
            assert events.index(("hashed", chunks[number - 2][0])) < read, f"chunk {number} read too early"
    assert [e[1] for e in events if e[0] == "hashed"] == [start for start, _ in chunks]
    # Each body is that range of the file (each MiB of it holds its number).
    assert [tuple(b) for b in result["bodies"]] == [
        (end - start, (start // MiB) % 256, ((end - 1) // MiB) % 256) for start, end in chunks
    ]
