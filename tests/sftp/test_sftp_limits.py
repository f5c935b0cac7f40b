"""File descriptors: no SFTP customer can exhaust the gateway's, and running out never floods the log.

Each test runs a real ``eftgw serve`` process (HTTPS and SFTP) under a low ``RLIMIT_NOFILE`` and attacks it
with real clients (paramiko; plain TCP connections for floods) while another customer and ``/healthz`` must
keep working.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
from sftp_support import Account, paramiko_sftp, wait_until

from tests.support import GatewayProcess, backend_env, client_ssl
from tests.test_webhooks_e2e import service_token


def limited_to(files: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

    return limit


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start ``eftgw serve`` processes limited to ``files`` open descriptors, with extra settings."""
    started: list[GatewayProcess] = []

    def start(files: int, **env: str) -> GatewayProcess:
        data_dir = tmp_path / f"node{len(started)}"
        node = GatewayProcess(data_dir, {**backend_env(data_dir.name + os.urandom(3).hex()), **env})
        node.preexec_fn = limited_to(files)
        started.append(node)
        node.start()
        wait_until(lambda: _listening(node.sftp_port), timeout=30)
        return node

    yield start
    for node in started:
        node.stop()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def account(node: GatewayProcess, case_id: str) -> Account:
    """An SFTP account of a newly opened case, made as the portal makes it (the HTTPS integration API with a
    service token): the CLI would start a Python process per call, 1.5 to 3 s each here, and
    ``tests/sftp/test_sftp_accounts.py`` runs ``eftgw sftp-account create`` itself."""
    token = service_token(node)
    portal(node, token, case_id, "open")
    issued = portal(node, token, case_id, "sftp-accounts")
    return Account(issued["username"], issued["password"], case_id)


def portal(node: GatewayProcess, token: str, case_id: str, action: str) -> dict[str, object]:
    """``POST /api/v1/integration/cases/{case}/{action}`` as the portal calls it."""
    request = urllib.request.Request(
        f"{node.url}/api/v1/integration/cases/{case_id}/{action}",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=client_ssl(), timeout=30) as reply:
        assert reply.status in (200, 201)
        return dict(json.loads(reply.read()))


def healthz(node: GatewayProcess, timeout: float = 10) -> int:
    with urllib.request.urlopen(f"{node.url}/healthz", context=client_ssl(), timeout=timeout) as reply:
        return int(reply.status)


def api_files(node: GatewayProcess, case_id: str, token: str) -> list[dict[str, object]]:
    request = urllib.request.Request(
        f"{node.url}/api/v1/cases/{case_id}/files", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, context=client_ssl(), timeout=10) as reply:
        body = json.loads(reply.read())
    return list(body["files"] if isinstance(body, dict) else body)


def open_fds(node: GatewayProcess) -> int:
    assert node.proc is not None
    return len(os.listdir(f"/proc/{node.proc.pid}/fd"))


def log_lines(node: GatewayProcess, text: str) -> int:
    return node.log_path.read_text(errors="replace").count(text)


def log_around(node: GatewayProcess, text: str) -> str:
    """The log from the first line with ``text`` on (for failure messages)."""
    log = node.log_path.read_text(errors="replace")
    return log[log.find(text) :][:3000] if text in log else ""


def a_customer_works(node: GatewayProcess, customer: Account, name: str) -> None:
    """Another customer logs in, uploads, stats, lists and reads back over SFTP."""
    data = os.urandom(300_000)
    with paramiko_sftp(node.sftp_port, customer) as (_t, sftp):
        with sftp.open(name, "wb") as out:
            out.write(data)
        assert sftp.stat(name).st_size == len(data)
        assert name in sftp.listdir()
        with sftp.open(name, "rb") as back:
            assert back.read() == data


@contextlib.contextmanager
def enough_client_descriptors(count: int) -> Iterator[None]:
    """This test process may hold ``count`` more sockets (soft limit raised within the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, count + 512))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def flood(port: int, count: int, seconds: float) -> list[socket.socket]:
    """Open up to ``count`` TCP connections to ``port`` within ``seconds`` (refused or stuck ones are
    skipped); they send nothing."""
    opened: list[socket.socket] = []
    deadline = time.monotonic() + seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        try:
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
        except OSError:
            continue
    return opened


def test_one_session_cannot_exhaust_the_file_descriptors(node_factory: Callable[..., GatewayProcess]) -> None:
    """Under ``ulimit -n 1024``, a session opening the same small file 1,000 times without closing gets 64
    handles, then SSH_FX_FAILURE "Too many open files in this session" for every further open; the account's
    sessions together stop at 128 ("for this account"). Meanwhile another customer uploads and reads back,
    ``/healthz`` and the HTTPS API answer, the process stays far from its limit, and the log stays small.
    Closing the sessions gives the handles back."""
    node = node_factory(1024)
    attacker, customer = account(node, "CASE-1"), account(node, "CASE-2")
    with paramiko_sftp(node.sftp_port, attacker) as (_t, sftp), sftp.open("small.txt", "wb") as out:
        out.write(b"small file\n")
    with contextlib.ExitStack() as sessions:
        first = sessions.enter_context(paramiko_sftp(node.sftp_port, attacker))[1]
        held: list[paramiko.SFTPFile] = []
        refusals: list[str] = []
        for _ in range(1000):
            try:
                handle = first.open("small.txt", "rb")
            except OSError as exc:
                refusals.append(str(exc))
                continue
            assert handle.read(1) == b"s"
            held.append(handle)
        assert len(held) == 64
        assert len(refusals) == 936
        assert all("Too many open files in this session (at most 64)" in r for r in refusals), refusals[:3]

        second = sessions.enter_context(paramiko_sftp(node.sftp_port, attacker))[1]
        for _ in range(64):
            held.append(second.open("small.txt", "rb"))
        third = sessions.enter_context(paramiko_sftp(node.sftp_port, attacker))[1]
        with pytest.raises(OSError, match="Too many open files for this account"):
            third.open("small.txt", "rb")
        with pytest.raises(OSError, match="Too many open files for this account"):
            third.open("new-upload.bin", "wb")

        a_customer_works(node, customer, "customer.bin")
        assert healthz(node) == 200
        token = node.token("CASE-2", user="carol")
        assert [f["name"] for f in api_files(node, "CASE-2", token)] == ["customer.bin"]
        descriptors = open_fds(node)
        assert descriptors < 400, descriptors
    # The sessions are gone: their handles are released, the account may open files again.
    with paramiko_sftp(node.sftp_port, attacker) as (_t, again):
        wait_until(lambda: _opens(again), timeout=30)
    assert log_lines(node, "refused an open") <= 3
    assert log_lines(node, "out of system resource") == 0
    assert node.log_path.stat().st_size < 200_000


def _opens(sftp: paramiko.SFTPClient) -> bool:
    try:
        sftp.open("small.txt", "rb").close()
    except OSError:
        return False
    return True


def test_a_connection_flood_stays_within_the_budget_and_https_answers(
    node_factory: Callable[..., GatewayProcess],
) -> None:
    """Under ``ulimit -n 1024`` (SFTP budget 1024 - 512 reserved = 512 descriptors), 1,100 TCP connections
    to the SFTP port are accepted and those past the budget closed at once: the process never runs out of
    descriptors, ``/healthz`` answers during the flood, and SFTP logins work again once it ends."""
    node = node_factory(1024)
    customer = account(node, "CASE-1")
    with enough_client_descriptors(1100):
        sockets = flood(node.sftp_port, 1100, seconds=60)
        try:
            assert len(sockets) > 600, len(sockets)  # past the budget of 512
            assert healthz(node) == 200
            descriptors = open_fds(node)
            assert descriptors < 1024 - 256, descriptors
        finally:
            for sock in sockets:
                sock.close()
    wait_until(lambda: open_fds(node) < 200, timeout=60)
    a_customer_works(node, customer, "after-flood.bin")
    assert healthz(node) == 200
    assert log_lines(node, "out of system resource") == 0, log_around(node, "out of system resource")
    assert log_lines(node, "SFTP connections refused") == 1  # once a minute, however many


def test_out_of_descriptors_the_accept_loop_backs_off_and_logs_at_a_bounded_rate(
    node_factory: Callable[..., GatewayProcess],
) -> None:
    """With no descriptors reserved (``EFTGW_SFTP_RESERVED_FDS=0``) under ``ulimit -n 256``, a flood of
    connections does exhaust the process. The SFTP accept loop then backs off (one retry a second, not a
    storm) and "out of system resource" is logged at most once per 10 s; when the flood ends the gateway
    serves HTTPS and SFTP again."""
    node = node_factory(256, EFTGW_SFTP_RESERVED_FDS="0")
    customer = account(node, "CASE-1")
    with enough_client_descriptors(600):
        sockets = flood(node.sftp_port, 600, seconds=10)
        try:
            wait_until(lambda: log_lines(node, "out of system resource") >= 1, timeout=30)
            first = time.monotonic()
            # Exhausted for a while: the accept loop keeps retrying until the next report (10 s on) counts
            # the retries it held back.
            wait_until(lambda: bool(held_back(node)), timeout=60)
            reported = log_lines(node, "out of system resource")
            assert reported <= 2 + (time.monotonic() - first) / 10, reported
            # Each report counts the retries held back since the previous one: about one a second.
            held = held_back(node)
            assert held and all(n <= 20 for n in held), held
        finally:
            for sock in sockets:
                sock.close()
    wait_until(lambda: open_fds(node) < 200, timeout=60)
    wait_until(lambda: _healthy(node), timeout=30)
    a_customer_works(node, customer, "after-exhaustion.bin")
    assert node.log_path.stat().st_size < 200_000, node.log_path.stat().st_size


def held_back(node: GatewayProcess) -> list[int]:
    """The retries each "out of system resource" report says it held back since the one before."""
    return [int(n) for n in re.findall(r"\((\d+) more since the last report", node.log_path.read_text())]


def _healthy(node: GatewayProcess) -> bool:
    try:
        return healthz(node, timeout=2) == 200
    except (OSError, ssl.SSLError):
        return False
