"""sshfs (Debian's, over FUSE) against the gateway: copying to a name twice and renaming it shows each name
once, with the newest content (issue 13)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from sftp_support import Account, GatewayThread, require_tool


@contextlib.contextmanager
def sshfs_mount(gateway: GatewayThread, account: Account, tmp_path: Path) -> Iterator[Path]:
    """The case folder mounted with sshfs (no attribute or directory cache: every call asks the gateway)."""
    require_tool("sshfs")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    known = gateway.known_hosts(tmp_path)
    done = subprocess.run(
        [
            "sshfs",
            f"{account.username}@127.0.0.1:/",
            str(mountpoint),
            "-p",
            str(gateway.port),
            "-o",
            "password_stdin",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "cache=no,dir_cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0",
        ],
        input=account.password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"sshfs could not mount: {done.stderr}"
    try:
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, timeout=60)


def test_sshfs_cp_twice_then_mv_shows_each_name_once(gateway: GatewayThread, tmp_path: Path) -> None:
    """``cp a name; cp b name; mv name other`` on an sshfs mount: ``name`` is gone, ``other`` has b's bytes,
    and the case holds that one file."""
    account = gateway.account()
    (tmp_path / "a").write_bytes(b"first copy\n")
    (tmp_path / "b").write_bytes(b"second copy, newer\n")
    with sshfs_mount(gateway, account, tmp_path) as mnt:
        for source in ("a", "b"):
            done = subprocess.run(
                ["cp", str(tmp_path / source), str(mnt / "name")], capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
        assert (mnt / "name").read_bytes() == b"second copy, newer\n"
        done = subprocess.run(["mv", str(mnt / "name"), str(mnt / "other")], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in mnt.iterdir()) == ["other"]
        assert not (mnt / "name").exists()
        assert (mnt / "other").read_bytes() == b"second copy, newer\n"
    assert [(f.name, f.size) for f in gateway.files()] == [("other", 19)]
