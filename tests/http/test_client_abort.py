"""A client that hangs up in the middle of a download (a killed curl, aria2c closing a segment) is a client
abort logged at info level: no ERROR line, no traceback, no 500 in the access log."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time

import pytest

from tests.http.rawhttp import download_and_hang_up
from tests.support import RunningGateway, http_session, tus_headers

pytestmark = pytest.mark.timeout(600)  # two 48 MiB uploads through S3 on a loaded machine take a while

SIZE = 48 * 1024 * 1024  # more than loopback socket buffers hold, so the gateway is still writing at the cut


async def upload_big_file(gw: RunningGateway) -> str:
    token = gw.token("C-1")
    headers = tus_headers(token, Upload_Length=str(SIZE), Content_Type="application/offset+octet-stream")
    async with (
        http_session() as s,
        s.post(gw.uploads_url("C-1"), data=io.BytesIO(os.urandom(SIZE)), headers=headers) as r,
    ):
        assert r.status == 201 and r.headers["Upload-Offset"] == str(SIZE)
    (record,) = await gw.gateway.repo.list_files("C-1")
    return f"/api/v1/cases/C-1/files/{record.id}/content"


async def access_record(caplog: pytest.LogCaptureFixture, path: str) -> logging.LogRecord:
    """The access log line of the (finished) request to ``path``; waits for the handler to end."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for record in caplog.records:
            if record.name == "eftgw.access" and path in record.getMessage():
                return record
        await asyncio.sleep(0.1)
    raise AssertionError(f"no access log line for {path}")


def assert_logged_as_abort(caplog: pytest.LogCaptureFixture, access: logging.LogRecord) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]
    assert " 500 " not in access.getMessage() and " 499 " in access.getMessage(), access.getMessage()
    aborts = [
        r for r in caplog.records if r.name == "eftgw.http" and "client aborted download" in r.getMessage()
    ]
    assert len(aborts) == 1 and aborts[0].levelno == logging.INFO


async def test_reset_mid_download_is_an_info_client_abort(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A raw TLS client that reads 1 MiB of a 48 MiB download and resets the connection is logged as
    'client aborted download' at info level, and the access log says 499, not 500."""
    caplog.set_level(logging.INFO)
    path = await upload_big_file(gw)
    received = await download_and_hang_up(
        gw.url, path, [("Authorization", f"Bearer {gw.token('C-1')}")], keep=1024 * 1024
    )
    assert received.startswith(b"HTTP/1.1 200")
    assert_logged_as_abort(caplog, await access_record(caplog, path))


async def test_killed_curl_is_an_info_client_abort(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """curl whose output pipe closes after 64 KiB (as when it is killed or its reader stops) ends the
    download mid-body; the gateway logs a client abort, not an unhandled error."""
    caplog.set_level(logging.INFO)
    path = await upload_big_file(gw)
    token = gw.token("C-1")
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sk",
        "--http1.1",
        "-H",
        f"Authorization: Bearer {token}",
        gw.url + path,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = await proc.stdout.readexactly(64 * 1024)
    assert len(first) == 64 * 1024
    proc.kill()
    await proc.wait()
    assert_logged_as_abort(caplog, await access_record(caplog, path))
