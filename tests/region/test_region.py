"""The production region, installed from the wheel and run as an operator would, proven through HAProxy.

Every test talks to the balancer only (``deploy/haproxy.cfg`` itself); which node served what comes from the
nodes' JSON logs, and what HAProxy decided from its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import paramiko
import psutil
import pytest
from playwright.async_api import async_playwright

from tests.region.region import ROOT, Region, wait_until
from tests.support import client_ssl, tus_headers
from tests.web.client import CHROMIUM, CHROMIUM_ARGS, ClientPage, random_file, sha256_of

# The region picks its servers itself. The first test also waits for the session's wheel build, pip install
# and two nodes (minutes on a loaded machine), which pytest-timeout counts against that test.
pytestmark = [pytest.mark.once, pytest.mark.timeout(900)]

MiB = 1024 * 1024
OCTETS = "application/offset+octet-stream"


def session(source: str = "127.0.0.1") -> aiohttp.ClientSession:
    """A client of the balancer from the loopback address ``source`` (trusting the region's certificate)."""
    connector = aiohttp.TCPConnector(ssl=client_ssl(), local_addr=(source, 0), force_close=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600))


def token_of(region: Region, user: str = "alice", role: str = "customer") -> str:
    return region.any_node.cli("token", "C-1", "--role", role, "--user", user).strip()


async def files_of(region: Region, token: str) -> list[dict[str, Any]]:
    async with (
        session() as s,
        s.get(f"{region.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        assert r.status == 200
        return list(await r.json())


def patch_starts(upload_id: str) -> Any:
    """A log-line predicate: a node took a PATCH of ``upload_id``."""
    return lambda line: line["upload"] == upload_id and line["event"].endswith(" started")


async def test_the_installed_wheel_serves_the_browser_client(region: Region) -> None:
    """The wheel carries the built client: /launch and its bundles come through the balancer (not 503)."""
    async with session() as s:
        async with s.get(f"{region.url}/launch") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            page = await r.text()
        script = page.split('src="', 1)[1].split('"', 1)[0]
        async with s.get(f"{region.url}{script}") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
    for node in region.nodes.values():  # the nodes run the venv's package, from outside the checkout
        assert node.proc is not None
        process = psutil.Process(node.proc.pid)
        assert ROOT not in Path(process.cwd()).parents and str(node.eftgw) in process.cmdline()
    (packaged,) = node.eftgw.parent.parent.glob("lib/python3*/site-packages/eftgw/web_client/index.html")
    assert packaged.read_text() == (ROOT / "web-client" / "dist" / "index.html").read_text()


# A PATCH cut by the kill can leave its client-side TLS transport, or only its socket, for the garbage
# collector (asyncio on Python 3.11, a connection reset under aiohttp's SSL writer). Those two warnings, and
# only they, are ignored here: every socket in this test's process is a client's (the nodes and HAProxy run
# in processes of their own). CI once failed on the socket's (laddr and raddr both ephemeral loopback ports).
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function _SelectorTransport.__del__"
    ":pytest.PytestUnraisableExceptionWarning"
)
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket fd=:pytest.PytestUnraisableExceptionWarning"
)
async def test_a_tus_upload_of_256_mib_survives_two_kills_of_its_node(both_up: Region) -> None:
    """The node serving the upload is SIGKILLed twice mid-PATCH and restarted; resumes through the balancer
    complete the file with the right SHA-256, having been served by both nodes."""
    region = both_up
    token = token_of(region)
    data = os.urandom(256 * MiB)
    async with session() as s:
        headers = tus_headers(
            token, Upload_Length=str(len(data)), Upload_Metadata="filename cmVnaW9uLmJpbg=="
        )
        async with s.post(f"{region.url}/api/v1/cases/C-1/uploads", headers=headers) as r:
            assert r.status == 201, await r.text()
            location = r.headers["Location"]
    upload_id = location.rstrip("/").rsplit("/", 1)[1]
    served = patch_starts(upload_id)
    kills: list[str] = []
    restarts: list[asyncio.Future[None]] = []
    offset = 0
    while offset < len(data) and len(kills) <= 2:
        before = region.served(served)
        patch = Patch(location, token, data, offset)
        if len(kills) == 2:
            offset = await patch.result
            break
        await wait_for(lambda p=patch: p.sent >= 64 * MiB or p.result.done(), 120, "64 MiB sent")
        now = region.served(served)
        (serving,) = [name for name in now if now[name] > before[name]]
        region.nodes[serving].kill9()
        kills.append(serving)
        with contextlib.suppress(aiohttp.ClientError, AssertionError, ConnectionError):
            await patch.result
        # HAProxy's checks take the dead node out; the other one (maybe restarted after the first kill) is in.
        other = next(name for name in region.nodes if name != serving)
        await asyncio.to_thread(region.wait_state, serving, "DOWN", 30)
        await asyncio.to_thread(region.wait_state, other, "UP", 60)
        restarts.append(asyncio.ensure_future(asyncio.to_thread(region.restart, serving)))
        offset = await head_offset(location, token)
    await asyncio.gather(*restarts)
    assert offset == len(data) and len(kills) == 2
    (record,) = [f for f in await files_of(region, token) if f["name"] == "region.bin"]
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert all(count > 0 for count in region.served(served).values()), "both nodes served the upload"
    gc.collect()  # collect the cut connections here, under this test's warning filter


async def head_offset(location: str, token: str) -> int:
    """The upload's offset, asked as a tus client does: retried for a while when no node answers (one node
    was just killed while the other is still being marked up again)."""
    for delay in (0, 0.5, 1, 2, 3, 5, 5, 10, 10, 20):
        await asyncio.sleep(delay)
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            async with session() as s, s.head(location, headers=tus_headers(token)) as r:
                if r.status == 200:
                    return int(r.headers["Upload-Offset"])
    raise AssertionError("no node answered HEAD for a minute")


class Patch:
    """One tus PATCH from ``offset`` to the end, sent in 1 MiB pieces; ``sent`` counts what went out."""

    def __init__(self, location: str, token: str, data: bytes, offset: int) -> None:
        self.location, self.token, self.data, self.offset = location, token, data, offset
        self.sent = 0
        self.result: asyncio.Future[int] = asyncio.ensure_future(self._send())

    async def _body(self) -> AsyncIterator[bytes]:
        for at in range(self.offset, len(self.data), MiB):
            chunk = self.data[at : at + MiB]
            self.sent += len(chunk)
            yield chunk

    async def _send(self) -> int:
        headers = tus_headers(self.token, Upload_Offset=str(self.offset), Content_Type=OCTETS)
        async with session() as s, s.patch(self.location, data=self._body(), headers=headers) as r:
            assert r.status == 204, await r.text()
            return int(r.headers["Upload-Offset"])


async def wait_for(condition: Any, within: float, what: str) -> None:
    """Poll ``condition`` on the event loop; fail with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


def host_key_from(region: Region, source: str) -> paramiko.PKey:
    """The SSH host key the balancer's SFTP port presents to a client at ``source``."""
    sock = socket.create_connection(("127.0.0.1", region.sftp_port), 15, source_address=(source, 0))
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=15)
        return transport.get_remote_server_key()
    finally:
        transport.close()
        sock.close()


def sftp_connections(line: dict[str, Any]) -> bool:
    return line["logger"] == "eftgw.proxy" and line["event"].startswith("sftp connection from")


def test_sftp_clients_see_one_host_key_whichever_node_answers(both_up: Region) -> None:
    """Ten connections in a row (from ten client addresses, spread by the balancer) see the same host key,
    and both nodes answered some of them."""
    region = both_up
    before = region.served(sftp_connections)
    keys = {host_key_from(region, f"127.0.0.{10 + i}").get_base64() for i in range(10)}
    assert len(keys) == 1
    after = region.served(sftp_connections)
    answered = {name: after[name] - before[name] for name in after}
    assert sum(answered.values()) == 10 and all(answered.values()), answered


def openssh_sftp(
    region: Region, account: dict[str, Any], batch: str, cwd: Path, source: str, *, limit_kbit: int = 0
) -> subprocess.Popen[str]:
    """OpenSSH ``sftp -b`` to the balancer from ``source``, logging in with the account's password."""
    key = host_key_from(region, source)
    (cwd / "known_hosts").write_text(f"[127.0.0.1]:{region.sftp_port} {key.get_name()} {key.get_base64()}\n")
    askpass = cwd / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\nprintf '%s\\n' '{account['password']}'\n")
    askpass.chmod(0o700)
    (cwd / "batch").write_text(batch)
    args = [
        "sftp",
        "-o", "BatchMode=no",
        "-o", f"UserKnownHostsFile={cwd / 'known_hosts'}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "LogLevel=ERROR",
        "-o", f"BindAddress={source}",
        "-o", "PreferredAuthentications=password,keyboard-interactive",
        "-o", "NumberOfPasswordPrompts=1",
        "-P", str(region.sftp_port),
    ]  # fmt: skip
    if limit_kbit:
        args += ["-l", str(limit_kbit)]
    args += ["-b", str(cwd / "batch"), f"{account['username']}@127.0.0.1"]
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": "none"}
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def read_by(proc: subprocess.Popen[str]) -> int:
    """Bytes the client process has read so far (its file, mostly): how far a rate-limited put got."""
    try:
        return int(psutil.Process(proc.pid).io_counters().read_chars)
    except psutil.NoSuchProcess:
        return 0


def test_openssh_reput_completes_a_file_after_its_node_was_killed(both_up: Region, tmp_path: Path) -> None:
    """An OpenSSH put is cut by a SIGKILL of its node; ``reput`` through the balancer completes the file."""
    region = both_up
    account = json.loads(region.any_node.cli("sftp-account", "create", "C-1"))
    source = "127.0.0.4"
    data = os.urandom(48 * MiB)
    (tmp_path / "big.bin").write_bytes(data)

    def login(line: dict[str, Any]) -> bool:
        return line["client"] == source and line["event"].startswith("audit action=sftp.login ")

    before = region.served(login)
    put = openssh_sftp(region, account, "put big.bin\n", tmp_path, source, limit_kbit=40_000)
    try:
        serving = wait_until(
            lambda: [name for name, count in region.served(login).items() if count > before[name]],
            60,
            "the SFTP login",
        )[0]
        wait_until(lambda: put.poll() is not None or read_by(put) >= 16 * MiB, 120, "16 MiB put")
        region.nodes[serving].kill9()
        output, _ = put.communicate(timeout=60)
    finally:
        if put.poll() is None:
            put.kill()
            put.communicate()
    assert put.returncode != 0, f"the put finished before the kill: {output}"
    reput = openssh_sftp(region, account, "reput big.bin\n", tmp_path, source)
    output, _ = reput.communicate(timeout=180)
    assert reput.returncode == 0, output
    region.restart(serving)
    token = token_of(region, "eve", "engineer")
    request = urllib.request.Request(
        f"{region.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, context=client_ssl(), timeout=60) as response:
        listed = json.load(response)
    (record,) = [f for f in listed if f["name"] == "big.bin"]
    assert record["sha256"] == hashlib.sha256(data).hexdigest()


async def test_haproxy_marks_a_killed_node_down_and_sends_new_requests_to_the_other(both_up: Region) -> None:
    """After a SIGKILL, HAProxy's health checks mark the node down in both backends, and every new request
    is served by the other node."""
    region = both_up
    token = token_of(region)
    victim, survivor = "gateway1", "gateway2"
    region.nodes[victim].kill9()
    await asyncio.to_thread(region.wait_state, victim, "DOWN", 30)

    def listings(line: dict[str, Any]) -> bool:
        return line["logger"] == "eftgw.access" and "GET /api/v1/cases/C-1/files 200" in line["event"]

    before = region.served(listings)
    for _ in range(10):
        await files_of(region, token)
    after = region.served(listings)
    assert after[survivor] - before[survivor] == 10 and after[victim] == before[victim]
    await asyncio.to_thread(region.restart, victim)
    # Back up by the checks deploy/haproxy.cfg means: HTTP 200 from /healthz and the SSH banner (tcp-check).
    ups = [line for line in region.haproxy_lines() if f"/{victim} is UP" in line]
    assert any("gateways_https" in line and "Layer7 check passed, code: 200" in line for line in ups)
    assert any(
        "gateways_sftp" in line and 'Layer7 check passed, code: 0, info: "(tcp-check)"' in line
        for line in ups
    )


def wrong_password(region: Region, source: str, username: str) -> None:
    """One SFTP connection from ``source`` that tries one wrong password (refused at whatever stage)."""
    sock = socket.create_connection(("127.0.0.1", region.sftp_port), 15, source_address=(source, 0))
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=15)
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password(username, "Not-the-password-1")
    finally:
        transport.close()
        sock.close()


def login(region: Region, source: str, account: dict[str, Any]) -> list[str]:
    """Log in from ``source`` and list the home directory."""
    sock = socket.create_connection(("127.0.0.1", region.sftp_port), 15, source_address=(source, 0))
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=15)
        transport.auth_password(account["username"], account["password"])
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        return client.listdir(".")
    finally:
        transport.close()
        sock.close()


def test_ten_wrong_passwords_ban_the_attackers_address_only(both_up: Region) -> None:
    """Through HAProxy, ten wrong SFTP passwords from 127.0.0.2 ban 127.0.0.2 and nobody else: 127.0.0.3
    logs in; the audit records each client's own address, never the balancer's."""
    region = both_up
    account = json.loads(region.any_node.cli("sftp-account", "create", "C-1"))
    attacker, customer = "127.0.0.2", "127.0.0.3"
    for _ in range(10):
        wrong_password(region, attacker, account["username"])
    with pytest.raises((paramiko.SSHException, EOFError, ConnectionError)):
        login(region, attacker, account)  # banned: even the right password is not tried
    assert isinstance(login(region, customer, account), list)
    events = [json.loads(line) for line in region.any_node.cli("audit", "list").splitlines()]
    failed = [e["remote"] for e in events if e["action"] == "sftp.login_failed"]
    assert failed.count(attacker) >= 10 and "127.0.0.1" not in failed
    logins = [e["remote"] for e in events if e["action"] == "sftp.login"]
    assert customer in logins and attacker not in logins and "127.0.0.1" not in logins


async def test_the_browser_page_uploads_two_files_through_the_balancer_while_a_node_is_stopped(
    both_up: Region, tmp_path: Path
) -> None:
    """With gateway2 stopped (SIGTERM), the page opened through the balancer launches and uploads two files;
    both are listed with their SHA-256, and every request of theirs was served by gateway1."""
    region = both_up
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-test-deps-web")
    region.nodes["gateway2"].stop()
    files = [
        random_file(tmp_path / name, size) for name, size in (("one.log", 9 * MiB), ("two.log", 5 * MiB))
    ]
    launch = region.any_node.cli("token", "C-1", "--role", "customer", "--user", "bob", "--launch").strip()
    before = region.served(lambda line: line["logger"] == "eftgw.access")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            async with ClientPage.open(browser, region.url) as client:
                await client.launch(launch)
                await client.choose(*files)
                await client.wait_done(2, within=120_000)
                listed = {row["name"]: row["sha256"] for row in await client.files()}
                assert not client.csp_violations() and not client.page_errors
        finally:
            await browser.close()
    assert listed["one.log"] == sha256_of(files[0]) and listed["two.log"] == sha256_of(files[1])
    after = region.served(lambda line: line["logger"] == "eftgw.access")
    assert after["gateway2"] == before["gateway2"] and after["gateway1"] > before["gateway1"]
    await asyncio.to_thread(region.restart, "gateway2")
