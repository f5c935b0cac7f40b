"""Secrets made on first start: one winner when several processes start at once, never a partial file."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from eftgw.accounts import load_or_create_account_key
from eftgw.auth import load_or_create_signing_key
from eftgw.secretfile import load_or_create
from eftgw.sftp.hostkeys import load_or_create_host_keys
from eftgw.tlsutil import ensure_self_signed

pytestmark = pytest.mark.once  # secrets on the local disk: the backend does not matter here


def _race(
    path: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue[bytes]
) -> None:
    barrier.wait()

    def slow_make() -> bytes:
        time.sleep(0.2)  # every racer is inside make() at once: each would write its own secret
        return os.urandom(32)

    results.put(load_or_create(Path(path), slow_make))


def test_processes_starting_at_once_all_use_the_one_secret_on_disk(tmp_path: Path) -> None:
    """Eight processes that find no secret and make one at the same moment end up with the same one."""
    path = tmp_path / "keys" / "secret.key"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(8)
    results: multiprocessing.Queue[bytes] = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(path), barrier, results)) for _ in range(8)]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert set(got) == {path.read_bytes()}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret.key"]  # no temporary file left


def test_an_existing_secret_is_kept_and_make_is_not_called(tmp_path: Path) -> None:
    """A secret on disk is read as it is; nothing new is made."""
    path = tmp_path / "secret"
    path.write_bytes(b"kept")

    def make() -> bytes:
        raise AssertionError("make() must not run when the secret exists")

    assert load_or_create(path, make) == b"kept"


def test_every_gateway_secret_is_private_and_stable_across_starts(tmp_path: Path) -> None:
    """Signing key, account key, host keys and the TLS key are mode 0600 and the same on a second start."""
    signing = load_or_create_signing_key(tmp_path / "keys" / "issuer.pem")
    account = load_or_create_account_key(tmp_path / "keys" / "accounts.key")
    hosts = load_or_create_host_keys(tmp_path / "ssh")
    cert, key = ensure_self_signed(tmp_path / "tls", "127.0.0.1")
    assert load_or_create_signing_key(tmp_path / "keys" / "issuer.pem").public_key() == signing.public_key()
    assert load_or_create_account_key(tmp_path / "keys" / "accounts.key") == account
    again = load_or_create_host_keys(tmp_path / "ssh")
    assert [k.export_public_key() for k in again] == [k.export_public_key() for k in hosts]
    assert ensure_self_signed(tmp_path / "tls", "127.0.0.1") == (cert, key)
    for secret in [
        tmp_path / "keys" / "issuer.pem",
        tmp_path / "keys" / "accounts.key",
        tmp_path / "ssh" / "ssh_host_ed25519_key",
        tmp_path / "ssh" / "ssh_host_rsa_key",
        key,
    ]:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
