"""Issue 13, SFTP: a file a client finished too early is continued by every client's resume, and a name shows
exactly one file (sshfs overwrite then rename).

A short finished file comes from OpenSSH ``sftp`` interrupted with Ctrl-C (SIGINT: it stops, sends CLOSE,
and the CLOSE finishes the upload) or from a paramiko ``put`` of part of the data. Each client then resumes
its own way (OpenSSH ``reput``, ``curl -C -``, lftp ``put -c``, FileZilla's WRITE-only reopen); the
gateway continues the finished file from its size in a new upload, lists the old version until that one
finishes, then deletes the old version with an audit event.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sftp_support import (
    FXF_CREAT,
    FXF_TRUNC,
    FXF_WRITE,
    Account,
    ClientKey,
    GatewayThread,
    open_with_flags,
    paramiko_sftp,
    require_tool,
    sha256,
    wait_until,
)
from test_sftp_lftp_rclone import lftp

from eftgw import metrics
from eftgw.model import FileRecord

MIB = 1024 * 1024


def short_file(gateway: GatewayThread, account: Account, name: str, data: bytes) -> FileRecord:
    """A paramiko script that dies mid-``put`` after a CLOSE: a short finished file."""
    with paramiko_sftp(gateway.port, account) as (_t, sftp), sftp.open(name, "wb") as out:
        out.write(data)
    record = gateway.file_named(name)
    assert record.size == len(data)
    return record


def audit_kinds(gateway: GatewayThread) -> list[tuple[str, str]]:
    events = gateway.call(gateway.gw.repo.list_audit("CASE-1"))
    return [(e.action, e.target) for e in events]


def reread_bytes() -> float:
    return metrics.DIGEST_REREAD_BYTES._value.get()


def assert_replaced(gateway: GatewayThread, name: str, old: FileRecord, data: bytes) -> None:
    """One file of that name with all the data; the old version was deleted with an audit event."""
    (record,) = [f for f in gateway.files() if f.name == name]
    assert record.size == len(data) and record.sha256 == sha256(data)
    assert record.id != old.id
    assert gateway.active_uploads() == []
    assert gateway.content(record) == data
    kinds = audit_kinds(gateway)
    assert ("file.deleted", old.id) in kinds
    completed = [k for k in kinds if k[0] == "upload.completed"]
    assert len(completed) >= 2  # the short version and the continued one


def test_openssh_ctrl_c_closes_a_short_file_and_reput_continues_it(
    gateway: GatewayThread, tmp_path: Path, client_key: ClientKey
) -> None:
    """OpenSSH ``sftp``, interrupted with SIGINT mid-``put``, sends CLOSE (a short file is finished); a later
    ``reput`` continues that file from its size; the old version stays listed until the new one finishes."""
    require_tool("sftp")
    account = gateway.account(keys=[client_key.public_line])
    data = os.urandom(24 * MIB)
    (tmp_path / "trace.bin").write_bytes(data)
    batch = tmp_path / "put-batch"
    batch.write_text("put trace.bin\n")
    args = [
        "sftp",
        "-o", f"UserKnownHostsFile={gateway.known_hosts(tmp_path)}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "LogLevel=ERROR",
        "-i", str(client_key.private),
        "-o", "IdentitiesOnly=yes",
        "-P", str(gateway.port),
        "-l", "16000",  # 2 MB/s: the SIGINT lands mid-transfer, however loaded the machine is
    ]  # fmt: skip
    with subprocess.Popen(
        [*args, "-b", str(batch), f"{account.username}@127.0.0.1"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    ) as client:
        try:
            wait_until(lambda: any(u.offset >= MIB for u in gateway.active_uploads()), timeout=60)
            client.send_signal(signal.SIGINT)  # Ctrl-C: the client stops, sends CLOSE, exits
            client.wait(timeout=60)
        finally:
            if client.poll() is None:
                client.kill()
    wait_until(lambda: any(f.name == "trace.bin" for f in gateway.files()), timeout=30)
    old = gateway.file_named("trace.bin")
    assert 0 < old.size < len(data), "the interrupted put should have finished a short file"
    assert old.sha256 == sha256(data[: old.size])

    before = reread_bytes()
    resumed = subprocess.run(
        [*args[:-2], "-b", "-", f"{account.username}@127.0.0.1"],
        cwd=tmp_path,
        input="reput trace.bin\nls -l trace.bin\n",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert reread_bytes() - before == old.size  # continued from a copy hashed once, no other read
    assert_replaced(gateway, "trace.bin", old, data)
    assert [line.split()[4] for line in resumed.stdout.splitlines() if line.startswith("-")][-1] == str(
        len(data)
    )


def test_the_old_version_stays_listed_until_the_continuation_finishes(gateway: GatewayThread) -> None:
    """While a continuation is open the case's file list still has the old version (engineers see it) and
    the SFTP name shows the upload at the old size; the CLOSE replaces the old version with the new file."""
    account = gateway.account()
    data = os.urandom(3 * MIB + 17)
    old = short_file(gateway, account, "app.log", data[: MIB + 3])
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        handle = open_with_flags(sftp, "app.log", FXF_WRITE)  # FileZilla's resume: WRITE only
        size = handle.stat().st_size
        assert size == old.size
        assert sftp.stat("app.log").st_size == old.size
        handle.seek(size)
        handle.write(data[size : size + MIB])
        handle.flush()
        assert [f.id for f in gateway.files()] == [old.id]
        (upload,) = gateway.active_uploads()
        assert upload.metadata["continues"] == old.id
        handle.write(data[size + MIB :])
        handle.close()
        sftp.utime("app.log", (1_500_000_000, 1_500_000_000))
        assert sftp.stat("app.log").st_size == len(data)
        assert sftp.listdir() == ["app.log"]
    assert_replaced(gateway, "app.log", old, data)
    modified = gateway.file_named("app.log").modified_at
    assert modified is not None and int(modified.timestamp()) == 1_500_000_000


def test_curl_resumes_a_short_file_with_dash_c(gateway: GatewayThread, tmp_path: Path) -> None:
    """``curl -C - -T`` over sftp (libssh2) stats the remote size, opens it for appending and sends the
    rest: the finished short file is continued."""
    curl = require_tool("curl")
    assert "sftp" in subprocess.run([curl, "-V"], capture_output=True, text=True).stdout
    account = gateway.account()
    data = os.urandom(5 * MIB + 1)
    old = short_file(gateway, account, "dump.tar", data[: 2 * MIB])
    (tmp_path / "dump.tar").write_bytes(data)
    done = subprocess.run(
        [
            curl,
            "--silent",
            "--show-error",
            "--insecure",
            "--user",
            f"{account.username}:{account.password}",
            "-C",
            "-",
            "-T",
            str(tmp_path / "dump.tar"),
            f"sftp://127.0.0.1:{gateway.port}/dump.tar",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert_replaced(gateway, "dump.tar", old, data)


def test_lftp_put_c_continues_a_short_file(gateway: GatewayThread, tmp_path: Path) -> None:
    """lftp ``put -c`` on a finished short file continues it from its size."""
    account = gateway.account()
    data = os.urandom(6 * MIB + 5)
    old = short_file(gateway, account, "big.bin", data[: 3 * MIB])
    (tmp_path / "big.bin").write_bytes(data)
    output = lftp(gateway, account, "put -c big.bin; cls -l big.bin", tmp_path)
    assert f"{len(data)}" in output, output
    assert_replaced(gateway, "big.bin", old, data)


def test_a_reopen_that_adds_nothing_keeps_the_file(gateway: GatewayThread) -> None:
    """Opening one's finished file for writing and closing it without writing (a touch, a failed resume)
    leaves the very same file and no upload behind."""
    account = gateway.account()
    old = short_file(gateway, account, "same.txt", b"unchanged")
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        open_with_flags(sftp, "same.txt", FXF_WRITE).close()
        assert sftp.stat("same.txt").st_size == 9
    assert [f.id for f in gateway.files()] == [old.id]
    assert gateway.active_uploads() == []


def test_another_sign_ins_file_is_not_continued(gateway: GatewayThread) -> None:
    """Only the account that uploaded a file may continue it; another account's reopen without TRUNC is
    refused (the file stays as it was), as are engineer files."""
    first, second = gateway.account(), gateway.account()
    old = short_file(gateway, first, "theirs.txt", b"from the first account")
    gateway.place_engineer_file("guide.pdf", b"%PDF engineer")
    with paramiko_sftp(gateway.port, second) as (_t, sftp):
        for name in ("theirs.txt", "guide.pdf"):
            with pytest.raises(PermissionError):
                open_with_flags(sftp, name, FXF_WRITE)
    assert old.id in [f.id for f in gateway.files()]
    assert gateway.active_uploads() == []


def test_overwrite_twice_then_rename_shows_each_name_once(gateway: GatewayThread) -> None:
    """sshfs ``cp a name; cp b name; mv name other`` (OPEN WRITE|CREAT|TRUNC, WRITE, CLOSE twice, then
    RENAME): the second copy replaces the first, so after the rename ``name`` is gone and ``other`` holds
    the newest content; stat, open, listing agree, and the case has one file."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        for content in (b"first copy", b"second copy, newer"):
            handle = open_with_flags(sftp, "name", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
            handle.write(content)
            handle.close()
            time.sleep(0.01)
        assert [f.size for f in gateway.files()] == [len(b"second copy, newer")]
        sftp.rename("name", "other")
        assert sftp.listdir() == ["other"]
        with pytest.raises(FileNotFoundError):
            sftp.stat("name")
        with sftp.open("other", "rb") as back:
            assert back.read() == b"second copy, newer"
    assert [(f.name, f.size) for f in gateway.files()] == [("other", len(b"second copy, newer"))]


def test_rename_takes_hidden_older_versions_of_the_name_with_it(gateway: GatewayThread) -> None:
    """Older versions of a name that exist already (e.g. an HTTP upload of the same name) are superseded
    when the newest is renamed: they never show under the old name again."""
    account = gateway.account()
    short_file(gateway, account, "name", b"older")
    time.sleep(0.01)

    async def plain_second_version() -> None:  # an upload finished outside SFTP: no replacement ran
        from eftgw.model import Principal, Role

        customer = Principal(user=account.username, role=Role.CUSTOMER, case_id="CASE-1")
        uploads = gateway.gw.uploads
        upload = await uploads.create(customer, "CASE-1", length=5, metadata={"filename": "name"})

        async def body():  # type: ignore[no-untyped-def]
            yield b"newer"

        await uploads.append(customer, "CASE-1", upload.id, 0, body())

    gateway.call(plain_second_version())
    assert len(gateway.files()) == 2
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        sftp.rename("name", "other")
        assert sftp.listdir() == ["other"]
    assert [(f.name, f.size) for f in gateway.files()] == [("other", 5)]
