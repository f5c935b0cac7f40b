"""tus-js-client (Node.js, ``tests/http/node``) in its IETF draft modes against the gateway: an upload killed
midway (``kill -9`` of the Node process after chunks were acknowledged) is resumed by a new process from its
stored upload URL, and the gateway's SHA-256 of the file is the data's."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support import RunningGateway, http_session

NODE_DIR = Path(__file__).parent / "node"
DRIVER = NODE_DIR / "tus-upload.mjs"
CHUNK = 1024 * 1024
SIZE = 32 * CHUNK
KILL_AFTER = 2 * CHUNK  # acknowledged bytes before the first process is killed


class Driver:
    """One Node process running the driver; its stdout is a stream of JSON events."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, gw: RunningGateway, file: Path, protocol: str, store: Path) -> Driver:
        node = shutil.which("node")
        assert node, "Node.js is missing: run scripts/install-test-deps-http-node"
        assert (NODE_DIR / "node_modules" / "tus-js-client").is_dir(), (
            "run scripts/install-test-deps-http-node"
        )
        env = {**os.environ, "NODE_TLS_REJECT_UNAUTHORIZED": "0"}  # the gateway's self-signed certificate
        args = [gw.uploads_url("C-1"), str(file), protocol, gw.token("C-1"), str(store), str(CHUNK)]
        process = await asyncio.create_subprocess_exec(
            node,
            str(DRIVER),
            *args,
            cwd=NODE_DIR,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def event(self) -> dict[str, Any]:
        assert self.process.stdout is not None and self.process.stderr is not None
        line = await self.process.stdout.readline()
        if not line:
            await self.process.wait()
            error = (await self.process.stderr.read()).decode()
            raise AssertionError(f"the driver ended (status {self.process.returncode}): {error}")
        event: dict[str, Any] = json.loads(line)
        return event


@pytest.mark.parametrize(("protocol", "interop"), [("ietf-draft-03", "5"), ("ietf-draft-05", "6")])
async def test_tus_js_client_resumes_a_killed_upload_in_a_new_process(
    gw: RunningGateway, tmp_path: Path, protocol: str, interop: str
) -> None:
    """In each draft mode: the first process is killed after 2 MiB were acknowledged; a second one finds the
    upload in its URL store, resumes at the gateway's offset (not from 0, same URL) and completes it with the
    draft; the file's SHA-256 on the gateway equals hashlib's of the data."""
    data = os.urandom(SIZE)
    file = tmp_path / "upload.bin"
    file.write_bytes(data)
    store = tmp_path / "tus-urls.json"

    first = await Driver.start(gw, file, protocol, store)
    url, acknowledged = None, 0
    try:
        async with asyncio.timeout(120):
            while acknowledged < KILL_AFTER:
                event = await first.event()
                assert event["event"] != "success", "the upload finished before it could be interrupted"
                if event["event"] == "url":
                    url = event["url"]
                elif event["event"] == "acknowledged":
                    acknowledged = event["offset"]
    finally:
        first.process.kill()
        await first.process.wait()
    assert url is not None and url.startswith(gw.url + "/api/v1/cases/C-1/uploads/")

    second = await Driver.start(gw, file, protocol, store)
    events = []
    async with asyncio.timeout(180):
        while not events or events[-1]["event"] != "success":
            events.append(await second.event())
    assert await second.process.wait() == 0
    assert events[0] == {"event": "resumed", "url": url}
    offsets = [e["offset"] for e in events if e["event"] == "acknowledged"]
    assert offsets and offsets[-1] == SIZE
    assert offsets[0] - CHUNK >= acknowledged, f"resumed below the acknowledged offset: {offsets[0]}"
    success = events[-1]
    assert success["url"] == url
    assert success["interop"] == interop and success["complete"] == "?1"

    token = gw.token("C-1")
    async with (
        http_session() as s,
        s.get(f"{gw.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        (record,) = await resp.json()
    assert record["name"] == "tus-js-client.bin"
    assert record["size"] == SIZE
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
