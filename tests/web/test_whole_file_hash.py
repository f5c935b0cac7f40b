"""The page's whole-file SHA-256 is built from the chunks the upload reads (web-client/src/whole-file.ts).

The module is bundled with the web client's own esbuild and run by Node.js on a real file, in the orders an
upload reads its chunks: in order, the prefetched second chunk before the first, chunks sent twice, a resume
at the gateway's offset, and no chunk at all. Every digest must equal ``hashlib``'s, and no byte a chunk
brought may be read from disk again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from tests.web.axe import NODE_DIR
from tests.web.client import MiB, random_file

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "web-client"


def run_scenarios(tmp_path: Path, source: Path) -> list[dict[str, object]]:
    node = shutil.which("node")
    assert node, "Node.js is required (scripts/install-test-deps-web)"
    esbuild = CLIENT / "node_modules" / ".bin" / "esbuild"
    assert esbuild.exists(), "run scripts/build-web-client first (it installs the web client's npm packages)"
    bundle = tmp_path / "whole-file.mjs"
    subprocess.run(
        [
            str(esbuild),
            str(CLIENT / "src" / "whole-file.ts"),
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
    done = subprocess.run(
        [node, str(NODE_DIR / "whole-file-hash.mjs"), str(bundle), str(source)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return list(json.loads(done.stdout))


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
