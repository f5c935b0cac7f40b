"""An SFTP upload on S3 keeps its writer within the SFTP share of the upload's 64 MiB (the session and the
write buffer hold more in front of the body pipeline than an HTTPS connection does), while an HTTPS-style
upload on the same node keeps its own, larger share: a real gateway on the real S3 server (Ceph RGW), a real
OpenSSH ``sftp`` client."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sftp_support import GatewayThread, openssh_sftp, sha256

from eftgw.memory import HTTP, PER_UPLOAD, SFTP, MiB, pipeline_held, writer_share
from eftgw.storage.s3_writer import BLOCK, SFTP_BLOCK, S3Writer
from tests.services import fresh_bucket

pytestmark = pytest.mark.once  # it picks its S3 server itself

SIZE = 40 * MiB  # three parts of 16, 16 and 8 MiB: two in flight fill the SFTP share


def s3_settings(label: str) -> dict[str, Any]:
    return {key.removeprefix("EFTGW_").lower(): value for key, value in fresh_bucket(label).items()} | {
        "storage": "s3"
    }


def test_an_sftp_upload_on_s3_gets_the_sftp_share(
    gateway_factory: Callable[..., GatewayThread], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every writer the SFTP upload's appends open keeps at most the SFTP share (33 MiB less 2 KiB, so that
    with what the session, the write buffer and the pipeline hold the upload stays within 64 MiB), and never
    holds more, with 2 MiB blocks; an upload over HTTPS on the same node gets 53.25 MiB, with 4 MiB blocks.
    The file arrives whole."""
    writers: list[S3Writer] = []
    peaks: dict[int, int] = {}
    init, fill = S3Writer.__init__, S3Writer._fill

    def recording_init(self: S3Writer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        writers.append(self)

    async def measured_fill(
        self: S3Writer, part: Any, pieces: list[memoryview], along: Any = None
    ) -> Sequence[memoryview]:
        left = await fill(self, part, pieces, along)
        peaks[id(self)] = max(peaks.get(id(self), 0), self.held)
        return left

    monkeypatch.setattr(S3Writer, "__init__", recording_init)
    monkeypatch.setattr(S3Writer, "_fill", measured_fill)
    gateway = gateway_factory(settings=s3_settings("sftp-share"))
    assert gateway.gw.store.name == "s3"
    account = gateway.account()
    data = os.urandom(SIZE)
    (tmp_path / "big.bin").write_bytes(data)

    result = openssh_sftp(gateway, account, "put big.bin\n", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    record = gateway.file_named("big.bin")
    assert record.size == SIZE and record.sha256 == sha256(data)

    sftp_share = writer_share(SFTP_BLOCK, SFTP)
    assert sftp_share + pipeline_held(SFTP_BLOCK, SFTP) == PER_UPLOAD and sftp_share >= 32 * MiB
    sftp_writers = [w for w in writers if w.memory != writer_share(BLOCK, HTTP)]
    assert writers and sftp_writers == writers  # each append the SFTP upload made: the SFTP share
    assert {w.memory for w in writers} == {sftp_share}
    assert {w.block_size for w in writers} == {SFTP_BLOCK}
    assert all(peaks.get(id(w), 0) <= sftp_share for w in writers)
    assert max(peaks.values()) >= 16 * MiB  # its parts were held in memory, not spooled

    writers.clear()
    gateway.place_engineer_file("notes.bin", data[: 3 * MiB])  # the core's append, as the HTTPS path makes it
    assert [w.memory for w in writers] == [writer_share(BLOCK, HTTP)] == [53 * MiB + 256 * 1024]
    assert [w.block_size for w in writers] == [BLOCK]
