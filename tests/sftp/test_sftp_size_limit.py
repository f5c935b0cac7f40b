"""``EFTGW_MAX_UPLOAD_SIZE`` over SFTP: the write that would cross the limit fails with a clear sentence,
nothing past the limit is stored, and the cut-off upload never becomes a completed file."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from sftp_support import FXF_CREAT, FXF_TRUNC, FXF_WRITE, GatewayThread, open_with_flags, paramiko_sftp

LIMIT = 1024 * 1024
SENTENCE = f"exceeds the gateway's size limit of {LIMIT} bytes"
PIECE = 256 * 1024


def test_write_past_the_limit_fails_and_nothing_past_it_is_stored(
    gateway_factory: Callable[..., GatewayThread],
) -> None:
    """Writes up to the limit are taken; the one that crosses it (and every later one) fails with
    SSH_FX_FAILURE naming the limit; close does not finish the upload; the stored size is the limit."""
    node = gateway_factory(settings={"max_upload_size": LIMIT})
    account = node.account()
    with paramiko_sftp(node.port, account) as (_t, sftp):
        handle = open_with_flags(sftp, "big.log", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        handle.set_pipelined(False)
        for _ in range(LIMIT // PIECE):
            handle.write(b"a" * PIECE)
        with pytest.raises(OSError, match=SENTENCE):
            handle.write(b"b" * PIECE)
        with pytest.raises(OSError, match=SENTENCE):
            handle.write(b"c")
        handle.close()  # refused too (paramiko does not report a failed close): nothing is finished
        assert sftp.stat("big.log").st_size == LIMIT
    assert node.files() == []
    (upload,) = node.active_uploads()
    assert upload.offset == LIMIT
    assert node.call(node.gw.store.staging_size(upload.staging_key)) == LIMIT


def test_pipelined_upload_of_a_larger_file_fails_and_completes_nothing(
    gateway_factory: Callable[..., GatewayThread],
) -> None:
    """A client that pipelines a 5 MiB file (paramiko ``putfo``) gets the failure, and no file appears."""
    node = gateway_factory(settings={"max_upload_size": LIMIT})
    account = node.account()
    with paramiko_sftp(node.port, account) as (_t, sftp):
        with pytest.raises(OSError, match=SENTENCE):
            sftp.putfo(io.BytesIO(b"x" * (5 * LIMIT)), "five.bin")
        assert sftp.stat("five.bin").st_size <= LIMIT
    assert node.files() == []
    assert all(u.offset <= LIMIT for u in node.active_uploads())


def test_a_file_of_exactly_the_limit_completes(gateway_factory: Callable[..., GatewayThread]) -> None:
    """The limit itself is allowed: a file of exactly that many bytes becomes a completed file."""
    node = gateway_factory(settings={"max_upload_size": LIMIT})
    account = node.account()
    with paramiko_sftp(node.port, account) as (_t, sftp):
        sftp.putfo(io.BytesIO(b"e" * LIMIT), "exact.bin")
    assert [f.size for f in node.files()] == [LIMIT]
