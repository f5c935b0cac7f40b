"""OpenSSH's own ``sftp`` client in batch mode against the gateway, as customers on Linux or macOS use it."""

from __future__ import annotations

import os
from pathlib import Path

from sftp_support import (
    ClientKey,
    GatewayThread,
    ProxyFactory,
    openssh_sftp,
    paramiko_sftp,
    sha256,
    wait_until,
)


def test_put_ls_get_roundtrip_lands_in_the_case_with_its_sha256(
    gateway: GatewayThread, tmp_path: Path, client_key: ClientKey
) -> None:
    """Files put with OpenSSH sftp are listed with their sizes, come back byte for byte, and are case files
    with their SHA-256, uploaded over SFTP by the account."""
    account = gateway.account(keys=[client_key.public_line])
    big = os.urandom(3 * 1024 * 1024 + 17)
    small = b"hello from sftp\n"
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "note.txt").write_bytes(small)
    (tmp_path / "empty.txt").write_bytes(b"")
    done = openssh_sftp(
        gateway,
        account,
        "put big.bin\nput note.txt\nput empty.txt\nls -l\n"
        "get big.bin back.bin\nget empty.txt empty-back.txt\n",
        cwd=tmp_path,
        key=client_key,
    )
    assert done.returncode == 0, done.stderr
    listing = {line.split()[-1]: line.split() for line in done.stdout.splitlines() if line.startswith("-")}
    assert listing["big.bin"][4] == str(len(big))
    assert listing["note.txt"][4] == str(len(small))
    assert listing["empty.txt"][4] == "0"
    assert (tmp_path / "back.bin").read_bytes() == big
    assert (tmp_path / "empty-back.txt").read_bytes() == b""
    records = {f.name: f for f in gateway.files()}
    assert records["big.bin"].sha256 == sha256(big)
    assert records["empty.txt"].size == 0 and records["empty.txt"].sha256 == sha256(b"")
    assert {records[n].via for n in records} == {"sftp"}
    assert {records[n].uploaded_by for n in records} == {account.username}
    assert gateway.content(records["note.txt"]) == small
    assert gateway.active_uploads() == []


def test_password_login_through_keyboard_interactive_and_password(
    gateway: GatewayThread, tmp_path: Path
) -> None:
    """The generated password logs in with the stock OpenSSH client (as a person typing it would)."""
    account = gateway.account()
    (tmp_path / "a.txt").write_bytes(b"abc")
    done = openssh_sftp(gateway, account, "put a.txt\nls\n", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert gateway.file_named("a.txt").size == 3


def test_interrupted_put_then_reput_resumes_from_the_durable_size(
    gateway: GatewayThread, tmp_path: Path, client_key: ClientKey, proxy_factory: ProxyFactory
) -> None:
    """A put whose connection is reset midway leaves an upload in progress whose listed size is durable;
    ``reput`` continues from there and the finished file is exactly the original."""
    account = gateway.account(keys=[client_key.public_line])
    data = os.urandom(12 * 1024 * 1024)
    (tmp_path / "dump.bin").write_bytes(data)
    proxy = proxy_factory(gateway.port, drop_after=5 * 1024 * 1024)
    cut = openssh_sftp(gateway, account, "put dump.bin\n", cwd=tmp_path, key=client_key, port=proxy.port)
    assert cut.returncode != 0
    assert proxy.dropped.is_set()
    wait_until(lambda: any(u.offset > 0 for u in gateway.active_uploads()))
    partial = gateway.active_uploads()[0]
    assert partial.name == "dump.bin" and 0 < partial.offset < len(data)
    assert gateway.files() == []

    listing = openssh_sftp(gateway, account, "ls -l dump.bin\n", cwd=tmp_path, key=client_key)
    assert listing.returncode == 0, listing.stderr
    listed = [line.split() for line in listing.stdout.splitlines() if line.startswith("-")]
    assert listed and int(listed[0][4]) == gateway.active_uploads()[0].offset

    resumed = openssh_sftp(
        gateway, account, "reput dump.bin\nget dump.bin back.bin\n", cwd=tmp_path, key=client_key
    )
    assert resumed.returncode == 0, resumed.stderr
    record = gateway.file_named("dump.bin")
    assert record.size == len(data) and record.sha256 == sha256(data)
    assert (tmp_path / "back.bin").read_bytes() == data
    assert gateway.active_uploads() == []


def test_engineer_files_download_and_stay_read_only(
    gateway: GatewayThread, tmp_path: Path, client_key: ClientKey
) -> None:
    """A file an engineer placed in the case is listed, downloads intact, and cannot be overwritten,
    renamed or removed by the customer."""
    account = gateway.account(keys=[client_key.public_line])
    tool = os.urandom(200_000)
    gateway.place_engineer_file("diagnostic-tool.bin", tool)
    (tmp_path / "mine.bin").write_bytes(b"customer data")
    done = openssh_sftp(gateway, account, "ls -l\nget diagnostic-tool.bin\n", cwd=tmp_path, key=client_key)
    assert done.returncode == 0, done.stderr
    assert "engineer" in done.stdout and "diagnostic-tool.bin" in done.stdout
    assert (tmp_path / "diagnostic-tool.bin").read_bytes() == tool
    for command in (
        "put mine.bin diagnostic-tool.bin",
        "rm diagnostic-tool.bin",
        "rename diagnostic-tool.bin x",
    ):
        refused = openssh_sftp(gateway, account, command + "\n", cwd=tmp_path, key=client_key)
        assert refused.returncode != 0, command
    assert gateway.content(gateway.file_named("diagnostic-tool.bin")) == tool


def test_folders_and_links_are_refused(gateway: GatewayThread, tmp_path: Path, client_key: ClientKey) -> None:
    """The case area is one folder of files: mkdir, symlink and hard links fail, nothing is created."""
    account = gateway.account(keys=[client_key.public_line])
    (tmp_path / "a.txt").write_bytes(b"a")
    assert openssh_sftp(gateway, account, "put a.txt\n", cwd=tmp_path, key=client_key).returncode == 0
    for command in ("mkdir sub", "symlink a.txt b.txt", "ln a.txt c.txt", "put a.txt sub/a.txt"):
        refused = openssh_sftp(gateway, account, command + "\n", cwd=tmp_path, key=client_key)
        assert refused.returncode != 0, command
    assert [f.name for f in gateway.files()] == ["a.txt"]


def test_legacy_rename_refuses_an_existing_target_and_posix_rename_replaces_it(
    gateway: GatewayThread, tmp_path: Path, client_key: ClientKey
) -> None:
    """``rename -l`` (SFTP v3 RENAME) onto an existing name fails; OpenSSH's default ``rename``
    (posix-rename@openssh.com) replaces the target; both only change metadata (same object, same digest)."""
    account = gateway.account(keys=[client_key.public_line])
    (tmp_path / "a.txt").write_bytes(b"first")
    (tmp_path / "b.txt").write_bytes(b"second")
    assert (
        openssh_sftp(gateway, account, "put a.txt\nput b.txt\n", cwd=tmp_path, key=client_key).returncode == 0
    )
    before = gateway.file_named("a.txt")
    clash = openssh_sftp(gateway, account, "rename -l a.txt b.txt\n", cwd=tmp_path, key=client_key)
    assert clash.returncode != 0
    assert sorted(f.name for f in gateway.files()) == ["a.txt", "b.txt"]
    moved = openssh_sftp(gateway, account, "rename -l a.txt c.txt\n", cwd=tmp_path, key=client_key)
    assert moved.returncode == 0, moved.stderr
    replaced = openssh_sftp(
        gateway, account, "rename c.txt b.txt\nget b.txt got.txt\n", cwd=tmp_path, key=client_key
    )
    assert replaced.returncode == 0, replaced.stderr
    after = gateway.file_named("b.txt")
    assert (after.id, after.object_key, after.sha256) == (before.id, before.object_key, before.sha256)
    assert [f.name for f in gateway.files()] == ["b.txt"]
    assert (tmp_path / "got.txt").read_bytes() == b"first"


def test_stat_of_an_upload_in_progress_reports_the_durable_size(gateway: GatewayThread) -> None:
    """While a write handle is open, other sessions' stat and listings show only what is durable."""
    account = gateway.account()
    with (
        paramiko_sftp(gateway.port, account) as (_t, writer),
        paramiko_sftp(gateway.port, account) as (_u, reader),
    ):
        handle = writer.open("growing.bin", "wb")
        handle.set_pipelined(False)
        handle.write(os.urandom(1_000_000))
        wait_until(lambda: reader.stat("growing.bin").st_size == 1_000_000)
        listed = {a.filename: a.st_size for a in reader.listdir_attr(".")}
        assert listed["growing.bin"] == gateway.active_uploads()[0].offset == 1_000_000
        handle.close()
    assert gateway.file_named("growing.bin").size == 1_000_000
