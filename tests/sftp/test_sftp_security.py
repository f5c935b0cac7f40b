"""Security of the SFTP side: expiry, revocation, case closure, brute force, paths, algorithms, keys."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import argon2
import asyncssh
import paramiko
import pytest
from sftp_support import (
    FXF_CREAT,
    FXF_TRUNC,
    FXF_WRITE,
    OPERATOR,
    ClientKey,
    GatewayFactory,
    GatewayThread,
    eftgw_cli,
    login_fails,
    open_with_flags,
    paramiko_sftp,
    settled_upload,
    wait_until,
)

# expiry, revocation, case closure --------------------------------------------------------------------


def test_an_expired_account_is_refused_and_its_live_session_cut(gateway: GatewayThread) -> None:
    """With the clock past creation + 120 hours, the periodic check cuts the live session (its upload in
    progress keeps what arrived, unfinished) and new logins are refused."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (transport, sftp):
        handle = open_with_flags(sftp, "before-expiry.bin", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        handle.set_pipelined(False)
        handle.write(b"k" * 65536)
        gateway.clock.offset = dt.timedelta(hours=120, seconds=1)
        wait_until(lambda: not transport.is_active(), timeout=15)
    assert settled_upload(gateway, "before-expiry.bin").offset == 65536
    assert gateway.files() == []
    login_fails(gateway.port, account.username, account.password)
    gateway.clock.offset = dt.timedelta(hours=119, minutes=59)
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        assert "before-expiry.bin" in sftp.listdir()


def test_revoking_an_account_cuts_its_sessions_at_once(gateway_factory: GatewayFactory) -> None:
    """A revocation through the account service (CLI or integration API in this process) cuts the
    account's live sessions without waiting for the periodic check, and refuses new logins."""
    gateway = gateway_factory(check_interval=3600)
    account = gateway.account()
    other = gateway.account()
    with (
        paramiko_sftp(gateway.port, account) as (transport, _s),
        paramiko_sftp(gateway.port, other) as (kept, _o),
    ):
        gateway.call(gateway.gw.accounts.revoke(OPERATOR, account.username))
        wait_until(lambda: not transport.is_active(), timeout=5)
        assert kept.is_active()
    login_fails(gateway.port, account.username, account.password)


def test_revoking_from_another_process_cuts_sessions_on_the_next_check(gateway: GatewayThread) -> None:
    """``eftgw sftp-account revoke`` run beside the gateway (another process, same database) cuts the live
    session at the gateway's next periodic check."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (transport, _s):
        done = eftgw_cli(gateway.data_dir, "sftp-account", "revoke", account.username)
        assert done.returncode == 0, done.stderr
        wait_until(lambda: not transport.is_active(), timeout=15)


def test_closing_the_case_refuses_the_next_request_and_cuts_the_session(
    gateway_factory: GatewayFactory,
) -> None:
    """When the case closes, the session's next request is refused and the connection cut (even with no
    periodic check due); logins to the closed case are refused."""
    gateway = gateway_factory(check_interval=3600)
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (transport, sftp):
        sftp.listdir()
        gateway.call(gateway.gw.cases.close(OPERATOR, account.case_id))
        with pytest.raises((PermissionError, OSError, EOFError, paramiko.SSHException)):
            sftp.listdir()
        wait_until(lambda: not transport.is_active(), timeout=5)
    login_fails(gateway.port, account.username, account.password)


def test_closing_the_case_from_the_cli_cuts_idle_sessions(gateway: GatewayThread) -> None:
    """``eftgw case close`` in another process cuts an idle session at the next periodic check."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (transport, _s):
        done = eftgw_cli(gateway.data_dir, "case", "close", account.case_id)
        assert done.returncode == 0, done.stderr
        wait_until(lambda: not transport.is_active(), timeout=15)


# brute force and user enumeration ------------------------------------------------------------------


@pytest.mark.once
def test_failed_logins_are_delayed_then_the_address_is_banned(gateway_factory: GatewayFactory) -> None:
    """Each failed login waits before the reply; after the threshold the account is banned from that
    address, so even the right password is refused from it, while other addresses still log in."""
    gateway = gateway_factory(failure_delay=0.4, defender_options={"threshold": 3, "ban_time": 600})
    account = gateway.account()
    for _ in range(3):
        assert login_fails(gateway.port, account.username, "wrong-password") >= 0.4
    login_fails(gateway.port, account.username, account.password)
    with pytest.raises((paramiko.SSHException, EOFError, OSError)), paramiko_sftp(gateway.port, account):
        pass
    assert gateway.sftp.defender.refuses("127.0.0.1", account.username)
    other = socket.create_connection(("127.0.0.1", gateway.port), timeout=30, source_address=("127.0.0.2", 0))
    with paramiko_sftp(gateway.port, account, sock=other) as (_t, sftp):
        assert sftp.listdir() == []


def test_unknown_and_known_usernames_get_the_same_reply_after_the_same_time(
    gateway_factory: GatewayFactory,
) -> None:
    """A wrong password for a real account, an unknown account name and a name that is not even an account
    name are refused with the same methods list, after one argon2id verification of the same cost, and at
    the same moment: the reply is due a fixed delay after the attempt arrived, whatever the path's work took.

    Checked on the mechanism, not on wall-clock medians (which a loaded machine spreads wider than any useful
    margin): the known-account path is made slower on purpose, and its reply is still due at the same
    deadline, so the wait after the work shrinks by at least what the work took. Every reply comes no sooner
    than the delay."""
    delay, slower = 1.0, 0.3
    gateway = gateway_factory(failure_delay=delay, defender_options={"threshold": 1000})
    account = gateway.account()
    candidates = {"known": account.username, "unknown": "sftp-aaaaaaaaaaaa", "odd": "root"}
    methods = {}
    for label, name in candidates.items():
        transport = paramiko.Transport(("127.0.0.1", gateway.port))
        transport.start_client(timeout=30)
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_none(name)
        methods[label] = sorted(refused.value.allowed_types)
        transport.close()
    assert methods["known"] == methods["unknown"] == methods["odd"]

    accounts, pacer = gateway.gw.accounts, gateway.sftp.pacer
    verified: list[str] = []
    hasher = accounts.hasher

    class CountingHasher:
        def hash(self, password: str) -> str:
            return hasher.hash(password)

        def verify(self, hashed: str, password: str) -> bool:
            verified.append(hashed)
            return hasher.verify(hashed, password)

    login, deadline_of, wait_for = accounts.login_password, pacer.deadline, pacer.wait
    arrivals: list[tuple[float, float]] = []  # (arrived, reply due)
    remaining: list[float] = []  # seconds left to the reply when the path's work was done

    async def slower_for_the_known_account(username: str, password: str, remote: str | None) -> object:
        if username == account.username:
            await asyncio.sleep(slower)
        return await login(username, password, remote)

    def deadline() -> float:
        arrived = time.monotonic()
        due = deadline_of()
        arrivals.append((arrived, due))
        return due

    async def wait(due: float) -> None:
        remaining.append(due - time.monotonic())
        await wait_for(due)

    setattr(accounts, "hasher", CountingHasher())  # noqa: B010 - replacing attributes of one instance
    setattr(accounts, "login_password", slower_for_the_known_account)  # noqa: B010
    setattr(pacer, "deadline", deadline)  # noqa: B010
    setattr(pacer, "wait", wait)  # noqa: B010
    observed: dict[str, list[float]] = {label: [] for label in candidates}
    verifications: dict[str, list[str]] = {label: [] for label in candidates}
    offsets: dict[str, list[float]] = {label: [] for label in candidates}
    left: dict[str, list[float]] = {label: [] for label in candidates}
    for _ in range(2):
        for label, name in candidates.items():
            before = len(verified)
            observed[label].append(login_fails(gateway.port, name, "not-the-password"))
            wait_until(lambda n=before + 1: len(remaining) == len(arrivals) == n, timeout=30)  # type: ignore[misc]
            verifications[label] += verified[before:]
            arrived, due = arrivals[-1]
            offsets[label].append(due - arrived)
            left[label].append(remaining[-1])
    for label in candidates:
        assert len(verifications[label]) == 2, verifications  # one argon2id verification per attempt
        assert all(d >= delay for d in observed[label]), observed  # never answered early
        assert all(delay <= o < delay + 0.5 for o in offsets[label]), offsets  # due at arrival + delay
    parameters = [argon2.extract_parameters(h) for hashes in verifications.values() for h in hashes]
    assert all(p == parameters[0] for p in parameters)  # the decoy hash costs what a real one does
    assert verifications["known"][0] != verifications["unknown"][0] == verifications["odd"][0]
    # The slower path's extra work came out of the wait, not on top of it.
    assert all(r <= delay - slower for r in left["known"]), left


def test_an_error_while_authenticating_rejects_the_login(
    gateway: GatewayThread, client_key: ClientKey
) -> None:
    """If checking a password or a key raises, the login is refused and the gateway keeps serving."""
    account = gateway.account(keys=[client_key.public_line])
    accounts = gateway.gw.accounts

    async def broken(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("database on fire")

    saved = accounts.login_password, accounts.authorized_keys
    setattr(accounts, "login_password", broken)  # noqa: B010 - replacing a method on one instance
    setattr(accounts, "authorized_keys", broken)  # noqa: B010
    try:
        login_fails(gateway.port, account.username, account.password)
        transport = paramiko.Transport(("127.0.0.1", gateway.port))
        transport.start_client(timeout=30)
        key = paramiko.Ed25519Key.from_private_key_file(str(client_key.private))
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_publickey(account.username, key)
        transport.close()
    finally:
        setattr(accounts, "login_password", saved[0])  # noqa: B010
        setattr(accounts, "authorized_keys", saved[1])  # noqa: B010
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        assert sftp.listdir() == []


# paths --------------------------------------------------------------------------------------------


def test_paths_cannot_leave_the_case_area(gateway: GatewayThread, tmp_path: Path) -> None:
    """``..``, absolute paths, NUL bytes, backslashes and nested paths never reach the host file system or
    another case: they resolve inside the case folder or are refused."""
    gateway.account("OTHER-CASE")
    gateway.place_engineer_file("other-case-secret.txt", b"not yours", case_id="OTHER-CASE")
    account = gateway.account()
    marker = f"eftgw-escape-{os.getpid()}-{time.monotonic_ns()}"
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        assert sftp.normalize("../../..") == "/"
        assert sftp.normalize("/..//./x/../y") == "/y"
        assert sftp.listdir("../..") == sftp.listdir("/") == []
        for path in (
            "/etc/passwd",
            "../../../../etc/passwd",
            "../OTHER-CASE/other-case-secret.txt",
            "other-case-secret.txt",
            "/" + str(tmp_path),
        ):
            with pytest.raises(FileNotFoundError):
                sftp.stat(path)
        for path in (f"../../../../../tmp/{marker}", f"/tmp/{marker}", "sub/file", "a\\b", "nul\x00byte"):
            with pytest.raises(OSError):
                sftp.open(path, "wb").close()
        with sftp.open(f"../../{marker}", "wb") as out:  # ".." stops at the case root
            out.write(b"inside")
        assert sftp.listdir() == [marker]
    assert not Path("/tmp", marker).exists() and not (tmp_path / marker).exists()
    assert [f.name for f in gateway.files()] == [marker]
    assert [f.name for f in gateway.files("OTHER-CASE")] == ["other-case-secret.txt"]


# algorithms and keys --------------------------------------------------------------------------------


def server_proposal(gateway: GatewayThread, tmp_path: Path) -> dict[str, list[str]]:
    """The algorithm lists the gateway proposes in its KEXINIT, as OpenSSH's client reports them."""
    done = subprocess.run(
        ["ssh", "-vv", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={gateway.known_hosts(tmp_path)}",
         "-p", str(gateway.port), "nobody@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    proposal = done.stderr.split("peer server KEXINIT proposal", 1)[1]
    lists = {}
    for key, pattern in (
        ("kex", r"KEX algorithms: (.*)"),
        ("hostkey", r"host key algorithms: (.*)"),
        ("ciphers", r"ciphers ctos: (.*)"),
        ("macs", r"MACs ctos: (.*)"),
        ("compression", r"compression ctos: (.*)"),
    ):
        match = re.search(pattern, proposal)
        assert match, key
        lists[key] = match.group(1).strip().split(",")
    return lists


@pytest.mark.once
def test_only_strong_algorithms_are_offered_with_strict_kex(gateway: GatewayThread, tmp_path: Path) -> None:
    """The gateway offers strict key exchange, no SHA-1 anywhere (no ssh-rsa host key signatures, no SHA-1
    MACs or key exchanges), no CBC ciphers and no compression; OpenSSH negotiates strict KEX."""
    offered = server_proposal(gateway, tmp_path)
    assert "kex-strict-s-v00@openssh.com" in offered["kex"]
    assert not [a for a in offered["kex"] if "sha1" in a or a.startswith("gss")]
    assert "ssh-rsa" not in offered["hostkey"] and "ssh-ed25519" in offered["hostkey"]
    assert {"rsa-sha2-512", "rsa-sha2-256"} <= set(offered["hostkey"])
    assert not [c for c in offered["ciphers"] if "cbc" in c or c in ("none", "3des-cbc")]
    assert not [m for m in offered["macs"] if "sha1" in m or "md5" in m or m.startswith("umac-64")]
    assert offered["compression"] == ["none"]


@pytest.mark.once
def test_a_client_limited_to_sha1_macs_cannot_connect(gateway: GatewayThread) -> None:
    """A client that only speaks hmac-sha1 finds no common MAC and no session is made."""
    transport = paramiko.Transport(
        ("127.0.0.1", gateway.port),
        disabled_algorithms={"macs": [m for m in paramiko.Transport._preferred_macs if m != "hmac-sha1"],
                             "ciphers": [c for c in paramiko.Transport._preferred_ciphers if "gcm" in c]},
    )  # fmt: skip
    with pytest.raises(paramiko.SSHException):
        transport.start_client(timeout=30)
    transport.close()


@pytest.mark.once
def test_clients_without_strict_kex_need_a_cipher_terrapin_cannot_attack(gateway: GatewayThread) -> None:
    """Without strict KEX (as rclone 1.60), AES-GCM or AES-CTR with a plain MAC is accepted; an
    encrypt-then-MAC mode, which prefix truncation can attack, is refused."""
    account = gateway.account()
    ciphers = list(paramiko.Transport._preferred_ciphers)
    macs = list(paramiko.Transport._preferred_macs)

    def attempt(cipher: str, mac: str) -> None:
        transport = paramiko.Transport(
            ("127.0.0.1", gateway.port),
            strict_kex=False,
            disabled_algorithms={
                "ciphers": [c for c in ciphers if c != cipher],
                "macs": [m for m in macs if m != mac],
            },
        )
        try:
            transport.connect(username=account.username, password=account.password)
            client = paramiko.SFTPClient.from_transport(transport)
            assert client is not None
            client.listdir()
        finally:
            transport.close()

    attempt("aes128-gcm@openssh.com", "hmac-sha2-256")
    attempt("aes256-ctr", "hmac-sha2-256")
    with pytest.raises((paramiko.SSHException, EOFError, OSError)):
        attempt("aes256-ctr", "hmac-sha2-256-etm@openssh.com")


def test_public_key_login_needs_a_strong_signature_by_a_key_of_that_account(
    gateway: GatewayThread, tmp_path: Path
) -> None:
    """An authorized RSA key logs in with an rsa-sha2 signature but not with a SHA-1 ``ssh-rsa`` one (made
    by asyncssh's client, which still can); a key not stored for the account, or stored for another
    account, is refused."""
    rsa = paramiko.RSAKey.generate(2048)
    rsa.write_private_key_file(str(tmp_path / "rsa"))
    other_rsa = paramiko.RSAKey.generate(2048)
    account = gateway.account(keys=[f"ssh-rsa {rsa.get_base64()}"])
    elsewhere = gateway.account("CASE-2", keys=[f"ssh-rsa {other_rsa.get_base64()}"])

    def key_login(name: str, key: paramiko.PKey) -> bool:
        transport = paramiko.Transport(("127.0.0.1", gateway.port))
        try:
            transport.start_client(timeout=30)
            try:
                transport.auth_publickey(name, key)
            except paramiko.AuthenticationException:
                return False
            return bool(transport.is_authenticated())
        finally:
            transport.close()

    async def asyncssh_login(signature_algs: list[str]) -> bool:
        key = asyncssh.read_private_key(tmp_path / "rsa")
        try:
            async with asyncssh.connect(
                "127.0.0.1",
                gateway.port,
                username=account.username,
                client_keys=[key],
                known_hosts=None,
                signature_algs=signature_algs,
                preferred_auth="publickey",
            ):
                return True
        except asyncssh.PermissionDenied:
            return False

    assert key_login(account.username, rsa)
    assert asyncio.run(asyncssh_login(["rsa-sha2-512"]))
    assert not asyncio.run(asyncssh_login(["ssh-rsa"]))
    assert not key_login(account.username, other_rsa)
    assert not key_login(elsewhere.username, rsa)
    assert key_login(elsewhere.username, other_rsa)


@pytest.mark.once
def test_host_keys_are_made_once_and_kept(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    """The host keys are generated on first start (private files mode 0600) and the same keys are served
    after a restart on the same data dir."""
    first = gateway_factory(host_keys="made")
    keys_dir = first.data_dir / "ssh"
    before = {p.name: p.read_bytes() for p in keys_dir.iterdir()}
    assert {"ssh_host_ed25519_key", "ssh_host_rsa_key"} <= set(before)
    assert all((keys_dir / n).stat().st_mode & 0o777 == 0o600 for n in before if not n.endswith(".pub"))
    first.stop()
    restarted = GatewayThread(first.data_dir).start()
    try:
        assert {p.name: p.read_bytes() for p in keys_dir.iterdir()} == before
        transport = paramiko.Transport(("127.0.0.1", restarted.port))
        transport.start_client(timeout=30)
        served = transport.get_remote_server_key()
        transport.close()
        assert served.get_base64() == (keys_dir / "ssh_host_ed25519_key.pub").read_text().split()[1]
    finally:
        restarted.stop()


@pytest.mark.once
def test_the_ssh_session_offers_sftp_and_nothing_else(gateway: GatewayThread) -> None:
    """A logged-in account gets no shell, no command execution, no scp and no port forwarding."""
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (transport, _sftp):
        for request in ("shell", "exec", "scp"):
            channel = transport.open_session(timeout=30)
            with pytest.raises(paramiko.SSHException):
                if request == "shell":
                    channel.invoke_shell()
                elif request == "exec":
                    channel.exec_command("cat /etc/passwd")
                else:
                    channel.exec_command("scp -t /tmp")
            channel.close()
        with pytest.raises(paramiko.ChannelException):
            transport.open_channel("direct-tcpip", ("127.0.0.1", gateway.port), ("127.0.0.1", 0), timeout=30)
        with pytest.raises(paramiko.SSHException):
            transport.request_port_forward("127.0.0.1", 0)
        assert transport.is_active()


def test_a_revoked_account_keeps_its_bytes_but_finishes_nothing(gateway_factory: GatewayFactory) -> None:
    """Revoked by another process (no periodic check due yet), the session's next CLOSE makes the received
    bytes durable but is refused: the upload stays unfinished and the session is cut."""
    gateway = gateway_factory(check_interval=3600)
    account = gateway.account()
    with paramiko_sftp(gateway.port, account) as (transport, sftp):
        handle = open_with_flags(sftp, "late.bin", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        handle.set_pipelined(False)
        handle.write(b"r" * 300_000)
        assert eftgw_cli(gateway.data_dir, "sftp-account", "revoke", account.username).returncode == 0
        with pytest.raises((PermissionError, OSError, EOFError, paramiko.SSHException)):
            handle.close()
        wait_until(lambda: not transport.is_active(), timeout=5)
    assert settled_upload(gateway, "late.bin").offset == 300_000
    assert gateway.files() == []
