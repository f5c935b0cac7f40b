"""What ``stat`` reports for an upload in progress is durable: it survives ``kill -9`` of the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sftp_support import (
    FXF_CREAT,
    FXF_TRUNC,
    FXF_WRITE,
    OPERATOR_ENGINEER,
    ROOT,
    Account,
    backend_for,
    eftgw_cli,
    free_port,
    open_with_flags,
    paramiko_sftp,
    settings_for,
    sha256,
    wait_until,
)

from eftgw.gateway import Gateway

MIB = 1024 * 1024


class GatewayProcess:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **backend_for(self.data_dir)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("sftp_gateway_process.py")),
                str(self.data_dir),
                str(self.port),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the process prints "ready" or dies
        assert line.strip() == "ready", f"gateway did not start: {line!r}"

    def kill_9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path / "data", free_port())
    yield process
    process.stop()


def test_the_size_stat_reported_survives_kill_9_and_the_upload_resumes_from_it(node: GatewayProcess) -> None:
    """Mid-upload, another session's ``stat`` reports a durable size; after ``kill -9`` and a restart the
    upload is still there with at least that size, resumes from what stat says, and ends intact."""
    node.start()
    assert eftgw_cli(node.data_dir, "case", "open", "CASE-1").returncode == 0
    created = eftgw_cli(node.data_dir, "sftp-account", "create", "CASE-1")
    assert created.returncode == 0, created.stderr
    issued = json.loads(created.stdout)
    account = Account(issued["username"], issued["password"], "CASE-1")
    data = os.urandom(16 * MIB)

    with (
        paramiko_sftp(node.port, account) as (_t, writer),
        paramiko_sftp(node.port, account) as (_u, watcher),
    ):
        handle = open_with_flags(writer, "crash.bin", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        handle.set_pipelined(False)
        for offset in range(0, 6 * MIB, 256 * 1024):
            handle.write(data[offset : offset + 256 * 1024])
        wait_until(lambda: watcher.stat("crash.bin").st_size > 0, timeout=30)
        reported = watcher.stat("crash.bin").st_size
        node.kill_9()

    node.start()
    with paramiko_sftp(node.port, account) as (_t, sftp):
        after = sftp.stat("crash.bin").st_size
        assert reported <= after <= 6 * MIB
        handle = open_with_flags(sftp, "crash.bin", FXF_WRITE)
        assert handle.stat().st_size == after
        handle.seek(after)
        handle.write(data[after:])
        handle.close()
    node.stop()

    async def recorded() -> tuple[str, int]:
        gateway = Gateway.build(settings_for(node.data_dir))
        await gateway.start()
        try:
            (record,) = await gateway.files.list(OPERATOR_ENGINEER, "CASE-1")
            return record.sha256, record.size
        finally:
            await gateway.close()

    assert asyncio.run(recorded()) == (sha256(data), len(data))
