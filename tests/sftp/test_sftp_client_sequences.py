"""The exact request sequences of WinSCP, FileZilla, OpenSSH, lftp and rclone, replayed with paramiko.

Each client resumes differently (see their sources); each test drops the connection mid-upload through a
proxy that resets it, then resumes the way that client does, and checks the finished file in the case.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from sftp_support import (
    FXF_APPEND,
    FXF_CREAT,
    FXF_TRUNC,
    FXF_WRITE,
    GatewayThread,
    ProxyFactory,
    fsetstat_size,
    open_with_flags,
    paramiko_sftp,
    settled_upload,
    sha256,
    through,
    write_until_dropped,
)

from eftgw.sftp.buffer import BufferedUpload

MIB = 1024 * 1024


def test_winscp_filepart_resume_remove_target_rename_setstat(
    gateway: GatewayThread, proxy_factory: ProxyFactory
) -> None:
    """WinSCP: upload to ``name.filepart``; after the drop, the offset from ``stat`` of the .filepart, reopen
    WRITE|CREAT, write from there, close, remove the old target, rename, set the mtime."""
    account = gateway.account()
    data = os.urandom(9 * MIB + 123)
    old = os.urandom(1000)
    with paramiko_sftp(gateway.port, account) as (_t, sftp), sftp.open("report.bin", "wb") as previous:
        previous.write(old)  # an earlier version of the target exists

    proxy = proxy_factory(gateway.port, drop_after=4 * MIB)
    with paramiko_sftp(proxy.port, account, sock=through(proxy)) as (_t, sftp):
        handle = open_with_flags(sftp, "report.bin.filepart", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        write_until_dropped(handle, data)
    partial = settled_upload(gateway, "report.bin.filepart")
    assert 0 < partial.offset < len(data)

    mtime = 1_600_000_000
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        resume_at = sftp.stat("report.bin.filepart").st_size
        assert resume_at == partial.offset
        handle = open_with_flags(sftp, "report.bin.filepart", FXF_WRITE | FXF_CREAT)
        handle.seek(resume_at)
        handle.write(data[resume_at:])
        handle.close()
        assert [u.name for u in gateway.active_uploads()] == [
            "report.bin.filepart"
        ]  # a .filepart is not done
        assert sftp.stat("report.bin").st_size == len(old)
        sftp.remove("report.bin")
        sftp.rename("report.bin.filepart", "report.bin")
        sftp.utime("report.bin", (mtime, mtime))
        assert sftp.stat("report.bin").st_mtime == mtime
        assert sftp.stat("report.bin").st_size == len(data)
    record = gateway.file_named("report.bin")
    assert record.sha256 == sha256(data) and record.size == len(data)
    assert record.modified_at is not None and int(record.modified_at.timestamp()) == mtime
    assert [f.name for f in gateway.files()] == ["report.bin"]
    assert gateway.active_uploads() == []


def test_filezilla_reopens_write_only_and_fstats_for_the_offset(
    gateway: GatewayThread, proxy_factory: ProxyFactory
) -> None:
    """FileZilla: upload straight to the name; to resume, open WRITE only, FSTAT the handle for the size,
    write from there, close (which finishes), then set the mtime."""
    account = gateway.account()
    data = os.urandom(7 * MIB + 5)
    proxy = proxy_factory(gateway.port, drop_after=3 * MIB)
    with paramiko_sftp(proxy.port, account, sock=through(proxy)) as (_t, sftp):
        handle = open_with_flags(sftp, "capture.pcap", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        write_until_dropped(handle, data)
    partial = settled_upload(gateway, "capture.pcap")
    assert gateway.files() == []

    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        assert {a.filename: a.st_size for a in sftp.listdir_attr()}["capture.pcap"] == partial.offset
        handle = open_with_flags(sftp, "capture.pcap", FXF_WRITE)
        size = handle.stat().st_size
        assert size == partial.offset
        handle.seek(size)
        handle.write(data[size:])
        handle.close()
        sftp.utime("capture.pcap", (1_500_000_000, 1_500_000_000))
    record = gateway.file_named("capture.pcap")
    assert record.sha256 == sha256(data)
    assert record.modified_at is not None and int(record.modified_at.timestamp()) == 1_500_000_000


def test_openssh_reput_appends_and_truncates_to_its_highwater_on_interruption(
    gateway: GatewayThread, proxy_factory: ProxyFactory
) -> None:
    """OpenSSH ``reput``: stat, open WRITE|CREAT|APPEND, write from the size; interrupted, it sends
    FSETSTAT(size = acknowledged high-water mark), which the gateway accepts; the next reput completes."""
    account = gateway.account()
    data = os.urandom(10 * MIB)
    proxy = proxy_factory(gateway.port, drop_after=2 * MIB)
    with paramiko_sftp(proxy.port, account, sock=through(proxy)) as (_t, sftp):
        handle = open_with_flags(sftp, "core.dump", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        write_until_dropped(handle, data)
    first = settled_upload(gateway, "core.dump")

    with paramiko_sftp(gateway.port, account) as (transport, sftp):  # reput, interrupted after 3 MiB more
        start = sftp.stat("core.dump").st_size
        assert start == first.offset
        handle = open_with_flags(sftp, "core.dump", FXF_WRITE | FXF_CREAT | FXF_APPEND)
        handle.seek(start)
        handle.write(data[start : start + 3 * MIB])
        handle.flush()
        highwater = start + 3 * MIB
        fsetstat_size(handle, highwater)
        assert handle.stat().st_size == highwater
        transport.sock.close()  # the connection dies before the CLOSE
    assert settled_upload(gateway, "core.dump").offset == highwater

    with paramiko_sftp(gateway.port, account) as (_t, sftp):  # reput again, to the end
        start = sftp.stat("core.dump").st_size
        handle = open_with_flags(sftp, "core.dump", FXF_WRITE | FXF_CREAT | FXF_APPEND)
        handle.seek(start)
        handle.write(data[start:])
        handle.close()
    assert gateway.file_named("core.dump").sha256 == sha256(data)


def test_lftp_put_continue_ends_with_fsetstat_size_and_mtime(
    gateway: GatewayThread, proxy_factory: ProxyFactory
) -> None:
    """lftp ``put -c``: stat for the size, open WRITE|CREAT (no TRUNC) and write from there; the upload ends
    with FSETSTAT(size, mtime) and CLOSE."""
    account = gateway.account()
    data = os.urandom(6 * MIB + 999)
    proxy = proxy_factory(gateway.port, drop_after=2 * MIB)
    with paramiko_sftp(proxy.port, account, sock=through(proxy)) as (_t, sftp):
        handle = open_with_flags(sftp, "logs.tar", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        write_until_dropped(handle, data)
    settled_upload(gateway, "logs.tar")

    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        pos = sftp.stat("logs.tar").st_size
        handle = open_with_flags(sftp, "logs.tar", FXF_WRITE | FXF_CREAT)
        handle.seek(pos)
        handle.write(data[pos:])
        handle.flush()
        fsetstat_size(handle, len(data), mtime=1_400_000_000)
        handle.close()
    record = gateway.file_named("logs.tar")
    assert record.sha256 == sha256(data)
    assert record.modified_at is not None and int(record.modified_at.timestamp()) == 1_400_000_000


def test_rclone_partial_then_posix_rename_replaces_the_target(
    gateway: GatewayThread, proxy_factory: ProxyFactory
) -> None:
    """rclone: write ``name.XXXX.partial``, close (still an upload in progress), then posix-rename onto the
    final name, replacing the file that had it; a dropped .partial is simply written again."""
    account = gateway.account()
    old, data = os.urandom(5000), os.urandom(3 * MIB + 7)
    with paramiko_sftp(gateway.port, account) as (_t, sftp), sftp.open("photo.raw", "wb") as previous:
        previous.write(old)
    proxy = proxy_factory(gateway.port, drop_after=1 * MIB)
    with paramiko_sftp(proxy.port, account, sock=through(proxy)) as (_t, sftp):
        handle = open_with_flags(sftp, "photo.raw.a1b2c3d4.partial", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        write_until_dropped(handle, data)
    settled_upload(gateway, "photo.raw.a1b2c3d4.partial")

    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        handle = open_with_flags(sftp, "photo.raw.e5f6a7b8.partial", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        handle.write(data)
        handle.close()
        assert "photo.raw.e5f6a7b8.partial" in [u.name for u in gateway.active_uploads()]
        sftp.posix_rename("photo.raw.e5f6a7b8.partial", "photo.raw")
        sftp.remove("photo.raw.a1b2c3d4.partial")  # rclone cleans up its abandoned partial
        assert sftp.stat("photo.raw").st_size == len(data)
    assert [(f.name, f.sha256) for f in gateway.files()] == [("photo.raw", sha256(data))]
    assert gateway.active_uploads() == []


def test_a_handle_closed_by_teardown_does_not_finish_but_an_explicit_close_does(
    gateway: GatewayThread,
) -> None:
    """Ending the session with a write handle open keeps the data as an upload in progress; CLOSE finishes."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        handle = open_with_flags(sftp, "left-open.bin", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        handle.set_pipelined(False)  # every write acknowledged before the session ends
        handle.write(b"x" * 100_000)
        handle.flush()
    upload = settled_upload(gateway, "left-open.bin")
    assert upload.offset == 100_000 and gateway.files() == []

    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        handle = open_with_flags(sftp, "left-open.bin", FXF_WRITE)
        handle.close()
    assert gateway.file_named("left-open.bin").size == 100_000
    assert gateway.active_uploads() == []


def test_writes_must_follow_the_durable_size_without_gaps(gateway: GatewayThread) -> None:
    """A write that would leave a gap, or rewrite earlier bytes, is refused; APPEND ignores the offset."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        handle = open_with_flags(sftp, "strict.bin", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        handle.set_pipelined(False)
        handle.write(b"a" * 1000)
        handle.seek(5000)
        with pytest.raises(OSError, match="continues at byte 1000"):
            handle.write(b"gap")
        handle.seek(10)
        with pytest.raises(OSError, match="continues at byte 1000"):
            handle.write(b"rewrite")
        handle.close()
        appender = open_with_flags(sftp, "strict.bin.filepart", FXF_WRITE | FXF_CREAT | FXF_APPEND)
        appender.set_pipelined(False)
        appender.write(b"one")
        appender.seek(0)
        appender.write(b"two")
        appender.close()
        sftp.rename("strict.bin.filepart", "appended.txt")
    assert gateway.content(gateway.file_named("appended.txt")) == b"onetwo"
    assert gateway.file_named("strict.bin").size == 1000


def test_setstat_size_accepts_the_durable_size_and_truncates_back(gateway: GatewayThread) -> None:
    """A size attribute equal to the durable size is accepted, a smaller one truncates the upload back
    (writing continues there), a larger one is refused; a finished file's size cannot change."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        handle = open_with_flags(sftp, "cut.bin", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        handle.set_pipelined(False)
        handle.write(b"0123456789" * 100)
        fsetstat_size(handle, 1000)
        fsetstat_size(handle, 600)
        assert handle.stat().st_size == 600
        with pytest.raises(OSError, match="600 bytes"):
            fsetstat_size(handle, 700)
        handle.seek(600)
        handle.write(b"END")
        handle.close()
        with pytest.raises(OSError):
            sftp.truncate("cut.bin", 10)
    assert gateway.content(gateway.file_named("cut.bin")) == (b"0123456789" * 60) + b"END"


def test_overwrite_replaces_the_file_and_remove_deletes_it(gateway: GatewayThread) -> None:
    """Opening a finished file with TRUNC uploads a new version that replaces the earlier one when it
    finishes (one file per name); ``remove`` then deletes it."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        for content in (b"version one", b"version two, longer"):
            with sftp.open("notes.txt", "wb") as out:
                out.write(content)
            time.sleep(0.01)
        assert sftp.stat("notes.txt").st_size == len(b"version two, longer")
        with sftp.open("notes.txt", "rb") as back:
            assert back.read() == b"version two, longer"
        assert [f.size for f in gateway.files()] == [19]
        sftp.remove("notes.txt")
        with pytest.raises(FileNotFoundError):
            sftp.stat("notes.txt")
    assert gateway.files() == []


def test_remove_cancels_an_upload_in_progress(gateway: GatewayThread) -> None:
    """Removing a name that is still being uploaded cancels that upload and frees its stored data."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        handle = open_with_flags(sftp, "abandon.bin.filepart", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        handle.write(b"z" * 50_000)
        handle.close()
        (upload,) = gateway.active_uploads()
        sftp.remove("abandon.bin.filepart")
        assert "abandon.bin.filepart" not in sftp.listdir()
    assert gateway.active_uploads() == [] and gateway.files() == []
    staging = gateway.call(gateway.gw.store.list_keys(f"uploads/CASE-1/{upload.id}"))
    assert staging == []


def test_zero_byte_files_upload_and_download(gateway: GatewayThread) -> None:
    """An empty file opens, closes and becomes an empty case file with the SHA-256 of nothing."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        open_with_flags(sftp, "empty", FXF_WRITE | FXF_CREAT | FXF_TRUNC).close()
        assert sftp.stat("empty").st_size == 0
        with sftp.open("empty", "rb") as back:
            assert back.read() == b""
    record = gateway.file_named("empty")
    assert record.size == 0 and record.sha256 == sha256(b"")


def test_a_temporary_name_is_finished_by_renaming_even_with_its_handle_open(gateway: GatewayThread) -> None:
    """Renaming a .filepart with its handle still open flushes and finishes it; the later CLOSE is fine."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        handle = open_with_flags(sftp, "early.txt.filepart", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        handle.write(b"written before the rename")
        handle.flush()
        sftp.rename("early.txt.filepart", "early.txt")
        handle.close()
    assert gateway.content(gateway.file_named("early.txt")) == b"written before the rename"


def test_reading_an_upload_in_progress_is_refused(gateway: GatewayThread) -> None:
    """Only complete files can be downloaded; a name still being uploaded refuses reads."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        handle = open_with_flags(sftp, "busy.bin", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        handle.write(b"partial")
        handle.flush()
        with pytest.raises(PermissionError):
            sftp.open("busy.bin", "rb")
        handle.close()
        with sftp.open("busy.bin", "rb") as back:
            assert back.read() == b"partial"


def test_paramiko_put_and_get_with_the_default_client(gateway: GatewayThread, tmp_path: Path) -> None:
    """paramiko's own put/get (pipelined, with its confirming stat) round-trip a file."""
    account = gateway.account()
    data = os.urandom(2 * MIB + 3)
    (tmp_path / "in.bin").write_bytes(data)
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        attrs = sftp.put(str(tmp_path / "in.bin"), "in.bin")
        assert attrs.st_size == len(data)
        sftp.get("in.bin", str(tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == data
    assert isinstance(paramiko.__version__, str)


@contextlib.contextmanager
def one_writing_another_looking(
    gateway: GatewayThread, first_bytes: bytes
) -> Iterator[tuple[paramiko.SFTPFile, paramiko.SFTPClient]]:
    """Two connections of one account: the first has written ``first_bytes`` to ``core.dump`` through a
    handle it keeps open (accepted, not yet durable); yields that handle and the second connection."""
    account = gateway.account()
    with (
        paramiko_sftp(gateway.port, account) as (_t, first),
        paramiko_sftp(gateway.port, account) as (_u, second),
    ):
        writing = open_with_flags(first, "core.dump", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        writing.set_pipelined(False)
        writing.write(first_bytes)
        yield writing, second


def test_a_resume_never_appends_over_bytes_an_earlier_connection_still_held(gateway: GatewayThread) -> None:
    """OpenSSH ``reput`` stats, then opens with APPEND and writes from the size it read. While an earlier
    connection's handle still holds accepted bytes (its drop not yet processed), ``stat`` first makes them
    durable, so it reports where the upload continues; and an APPEND write naming an older size is refused
    instead of appending the same bytes a second time (a resumed 12 MiB file once came out 14.9 MB)."""
    data = os.urandom(3000)
    with one_writing_another_looking(gateway, data[:1000]) as (_earlier, sftp):
        assert sftp.stat("core.dump").st_size == 1000
        handle = open_with_flags(sftp, "core.dump", FXF_WRITE | FXF_CREAT | FXF_APPEND)
        handle.set_pipelined(False)
        handle.seek(600)  # a size read before the earlier connection's last bytes landed
        with pytest.raises(OSError, match="continues at byte 1000"):
            handle.write(data[600:1000])
        handle.seek(2000)
        with pytest.raises(OSError, match="continues at byte 1000"):
            handle.write(data[2000:])
        handle.seek(1000)
        handle.write(data[1000:2000])
        handle.seek(0)  # an APPEND write naming no offset lands at the end
        handle.write(data[2000:])
        handle.close()
    assert gateway.file_named("core.dump").sha256 == sha256(data)


def test_removing_a_file_another_connection_is_writing_discards_it_without_flushing_it(
    gateway: GatewayThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rm`` of a file another connection's handle is still writing removes it at once: its accepted bytes
    are dropped, not first made durable (no flush of the writer for a remove, where ``stat`` flushes one);
    the name is gone, the writing handle's next write is refused, its close finishes nothing, and neither an
    upload nor a file of that name is left."""
    flushes: list[str] = []
    flush = BufferedUpload.flush

    async def counted_flush(self: BufferedUpload) -> None:
        flushes.append(self.upload_id)
        await flush(self)

    monkeypatch.setattr(BufferedUpload, "flush", counted_flush)
    data = os.urandom(3000)
    with one_writing_another_looking(gateway, data[:1000]) as (writing, sftp):
        (upload,) = gateway.active_uploads()
        before = len(flushes)
        sftp.remove("core.dump")
        assert flushes[before:] == []
        with pytest.raises(FileNotFoundError):
            sftp.stat("core.dump")
        assert "core.dump" not in sftp.listdir(".")
        with pytest.raises(OSError, match="removed"):
            writing.write(data[1000:])
        writing.close()  # ends the handle; it finishes nothing
        assert sftp.listdir(".") == []
    assert gateway.active_uploads() == []
    assert [f.name for f in gateway.files()] == []
    assert upload.name == "core.dump"
