"""lftp and rclone, as installed from Debian (scripts/install-test-deps-sftp), against the gateway."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from sftp_support import Account, GatewayThread, ProxyFactory, require_tool, settled_upload, sha256

MIB = 1024 * 1024


def lftp(gateway: GatewayThread, account: Account, commands: str, cwd: Path, port: int | None = None) -> str:
    require_tool("lftp")
    known = gateway.known_hosts(cwd, port)
    script = (
        f"set sftp:connect-program 'ssh -a -x -o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes'; "
        "set net:max-retries 1; set net:timeout 20; set net:reconnect-interval-base 1; "
        f"{commands}; bye"
    )
    started = time.monotonic()
    done = subprocess.run(
        [
            "lftp",
            "-u",
            f"{account.username},{account.password}",
            "-e",
            script,
            f"sftp://127.0.0.1:{port or gateway.port}",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    print(f"lftp {commands!r} took {time.monotonic() - started:.1f}s")
    return done.stdout + done.stderr


def test_lftp_put_then_interrupted_put_resumed_with_put_c(
    gateway: GatewayThread, tmp_path: Path, proxy_factory: ProxyFactory
) -> None:
    """lftp uploads a file; an upload cut by a connection reset continues with ``put -c`` from the durable
    size, and the case file has the original's SHA-256."""
    account = gateway.account()
    small = os.urandom(300_000)
    big = os.urandom(10 * MIB)
    (tmp_path / "small.bin").write_bytes(small)
    (tmp_path / "big.bin").write_bytes(big)
    lftp(gateway, account, "put small.bin", tmp_path)
    assert gateway.file_named("small.bin").sha256 == sha256(small)

    proxy = proxy_factory(gateway.port, drop_after=4 * MIB)
    lftp(gateway, account, "put big.bin", tmp_path, port=proxy.port)
    assert proxy.dropped.is_set()
    partial = settled_upload(gateway, "big.bin")
    assert 0 < partial.offset < len(big)

    output = lftp(gateway, account, "put -c big.bin; cls -l big.bin", tmp_path)
    record = gateway.file_named("big.bin")
    assert record.size == len(big) and record.sha256 == sha256(big), output
    assert gateway.active_uploads() == []


def test_rclone_copy_and_check(gateway: GatewayThread, tmp_path: Path) -> None:
    """rclone copies a folder of files into the case (its SFTP library's extra write bytes are tolerated)
    and ``rclone check --download`` finds them identical."""
    require_tool("rclone")
    account = gateway.account()
    source = tmp_path / "logs"
    source.mkdir()
    files = {f"part-{i}.log": os.urandom(size) for i, size in enumerate((0, 1, 70_000, 3 * MIB + 11))}
    for name, data in files.items():
        (source / name).write_bytes(data)
    obscured = subprocess.run(
        ["rclone", "obscure", "-"],
        input=account.password,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    remote = (
        f":sftp,host=127.0.0.1,port={gateway.port},user={account.username},pass={obscured},"
        f"known_hosts_file={gateway.known_hosts(tmp_path)}:"
    )
    env = {**os.environ, "RCLONE_CONFIG": str(tmp_path / "rclone.conf")}
    for command in (["copy", str(source), remote], ["check", "--download", str(source), remote]):
        done = subprocess.run(
            ["rclone", *command, "--retries", "1", "--low-level-retries", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
    records = {f.name: f for f in gateway.files()}
    assert {name: records[name].sha256 for name in files} == {name: sha256(d) for name, d in files.items()}
