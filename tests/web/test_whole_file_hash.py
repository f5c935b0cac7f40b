"""The page's whole-file SHA-256 is built from the chunks the upload reads (web-client/src/whole-file.ts).

The module is bundled with the web client's own esbuild and run by Node.js on a real file, in the orders an
upload reads its chunks: in order, the prefetched second chunk before the first, chunks sent twice, a resume
at the gateway's offset, and no chunk at all. Every digest must equal ``hashlib``'s, and no byte a chunk
brought may be read from disk again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.web.axe import NODE_DIR
from tests.web.client import MiB, random_file

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
    """Each order of chunk reads gives the file's SHA-256; only bytes no chunk brought are read from disk."""
    source = random_file(tmp_path / "file.bin", 37 * MiB + 4321)
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    results = {r["name"]: r for r in run_scenarios(tmp_path, source)}

    for name in (
        "in order",
        "second chunk read first",
        "chunk read again",
        "resumed at an offset",
        "no chunks",
    ):
        assert results[name]["sha256"] == expected, name
    assert results["in order"]["disk_bytes"] == 0
    assert results["second chunk read first"]["disk_bytes"] == 0
    assert results["chunk read again"]["disk_bytes"] == 0
    # Before the offset nothing was sent, so it is read from disk; the chunks after it are read at most once
    # more while the hash catches up (the first chunk or two), never the whole rest of the file.
    offset = 5 * MiB + 12345
    assert offset <= results["resumed at an offset"]["disk_bytes"] <= offset + 2 * 2 * MiB
    assert results["no chunks"]["disk_bytes"] == source.stat().st_size
    assert results["read returns"] == {"name": "read returns", "bytes": 1000, "beside": 1000, "equal": True}


def test_a_chunk_read_ahead_is_sent_even_when_the_chunk_size_grew(tmp_path: Path) -> None:
    """The chunk read and hashed while the previous one was sent is used as it is, never read again.

    The page grows its chunk after each fast one; before, a read-ahead chunk of the old size was thrown away
    and the range read again at the new size, so each growing chunk was read twice and not overlapped.
    """
    result = run_node("chunk-source.mjs", str(bundle_module(tmp_path, "tus-adapter")))
    assert isinstance(result, dict)
    reads = [(start, end) for start, end, _ in result["reads"]]
    assert all(stream == "S" for _, _, stream in result["reads"])
    assert len(reads) == len(set(reads))
    covered = sorted(reads)
    assert covered[0][0] == 0 and covered[-1][1] == 20 * MiB
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    assert [tuple(r) for r in result["sent"]] == covered
