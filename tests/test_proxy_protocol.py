"""PROXY protocol v2 on a node's HTTPS and SFTP listeners: the client's address from a trusted balancer's
header reaches request handling, the SFTP login defender, audit events and the logs; anyone else is
refused a header.

The node is a real ``eftgw serve`` process with ``EFTGW_PROXY_PROTOCOL=on`` trusting 127.0.0.1 only; the
tests act as the balancer (from 127.0.0.1) and as direct clients (from 127.0.0.2), over real sockets.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from pydantic import ValidationError

from eftgw.config import Settings
from eftgw.proxy_protocol import (
    ProxyHeaderError,
    encode_header,
    header_length,
    is_trusted,
    looks_like_proxy_header,
    parse_header,
    parse_networks,
)
from tests.support import GatewayProcess, client_ssl

pytestmark = pytest.mark.once  # one node with its own settings; the backend does not matter here


def test_headers_round_trip_for_ipv4_ipv6_and_local() -> None:
    """A header names the client of a TCP connection over IPv4 or IPv6; LOCAL (health checks) names none."""
    v4 = encode_header(("198.51.100.7", 40000), ("10.0.0.5", 443))
    assert parse_header(v4).source == ("198.51.100.7", 40000) and len(v4) == header_length(v4[:16]) == 28
    v6 = encode_header(("2001:db8::7", 50000))
    assert parse_header(v6).source == ("2001:db8::7", 50000)
    local = parse_header(encode_header(None))
    assert local.command == "LOCAL" and local.source is None


def test_v1_garbage_and_oversized_headers_are_refused() -> None:
    """Only v2 is accepted: the text v1 header, bytes that are no header, and absurd lengths are errors."""
    with pytest.raises(ProxyHeaderError, match="v1"):
        header_length(b"PROXY TCP4 198.51.100.7 10.0.0.5 40000 443\r\n"[:16])
    with pytest.raises(ProxyHeaderError, match="does not start"):
        header_length(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcde")
    huge = encode_header(("198.51.100.7", 1))[:14] + b"\xff\xff"
    with pytest.raises(ProxyHeaderError, match="too long"):
        header_length(huge)
    assert looks_like_proxy_header(b"PROXY TCP4 ") and looks_like_proxy_header(encode_header(None)[:5])
    assert not looks_like_proxy_header(b"\x16\x03\x01") and not looks_like_proxy_header(b"POST /api")


def test_trusted_proxies_are_cidrs_given_comma_separated() -> None:
    """EFTGW_TRUSTED_PROXIES takes comma-separated CIDRs; PROXY protocol on without any fails at start."""
    settings = Settings(proxy_protocol="on", trusted_proxies="10.0.0.0/24, 127.0.0.1")  # type: ignore[arg-type]
    assert settings.trusted_proxies == ["10.0.0.0/24", "127.0.0.1"]
    networks = parse_networks(settings.trusted_proxies)
    assert is_trusted("10.0.0.9", networks) and is_trusted("::ffff:127.0.0.1", networks)
    assert not is_trusted("10.0.1.9", networks)
    with pytest.raises(ValidationError, match="PROXY_PROTOCOL=on needs"):
        Settings(proxy_protocol="on")
    with pytest.raises(ValidationError, match="not a network"):
        Settings(trusted_proxies="10.0.0.0/33")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    base = tmp_path_factory.mktemp("proxied")
    env = {
        "EFTGW_PROXY_PROTOCOL": "on",
        "EFTGW_TRUSTED_PROXIES": "127.0.0.1/32",
        "EFTGW_LOG_FORMAT": "json",
        "EFTGW_NODE_NAME": "node-p",
    }
    gateway = GatewayProcess(base / "node", env)
    gateway.start()
    gateway.cli("case", "open", "C-1")
    try:
        yield gateway
    finally:
        gateway.stop()


class ProxiedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection that first writes ``preamble`` (a PROXY header, or nothing) from ``source``."""

    def __init__(self, port: int, preamble: bytes, source: str = "127.0.0.1") -> None:
        super().__init__("127.0.0.1", port, context=client_ssl(), timeout=15)
        self.preamble = preamble
        self.source = source

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), 15, source_address=(self.source, 0))
        try:
            sock.sendall(self.preamble)
            tls = self._context.wrap_socket(  # type: ignore[attr-defined]
                sock, server_hostname=self.host, do_handshake_on_connect=False
            )
        except BaseException:
            sock.close()
            raise
        try:
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        self.sock = tls


def request(conn: http.client.HTTPSConnection, method: str, path: str, **headers: str) -> int:
    """One request on its own connection (closed after)."""
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def log_lines(node: GatewayProcess) -> list[dict]:
    return [json.loads(line) for line in node.log_path.read_text().splitlines() if line.strip()]


def audit(node: GatewayProcess) -> list[dict]:
    return [json.loads(line) for line in node.cli("audit", "list").stdout.splitlines()]


def test_https_takes_the_client_address_from_a_trusted_proxys_header(node: GatewayProcess) -> None:
    """Through a trusted proxy, the header's address is the request's: in the audit event and access log."""
    token = node.token("C-1")
    conn = ProxiedHTTPS(node.port, encode_header(("198.51.100.7", 40000), ("127.0.0.1", node.port)))
    headers = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0", "Upload-Length": "5"}
    assert request(conn, "POST", "/api/v1/cases/C-1/uploads", **headers) == 201
    created = [e for e in audit(node) if e["action"] == "upload.created"]
    assert created[-1]["remote"] == "198.51.100.7"
    access = [e for e in log_lines(node) if e["logger"] == "eftgw.access" and "POST" in e["event"]]
    assert access[-1]["client"] == "198.51.100.7" and access[-1]["case"] == "C-1"


def test_a_body_behind_a_proxy_header_is_received_into_blocks_and_the_connection_goes_on(
    node: GatewayProcess,
) -> None:
    """On a connection admitted through a PROXY header (the socket handed to aiohttp by the listener), a
    4 MiB PATCH body is received into the pipeline's blocks (counted in /metrics) and stored exactly, and
    a HEAD on the same keep-alive connection is answered with the new offset."""
    token = node.token("C-1")
    data = os.urandom(4 * 1024 * 1024 + 3)
    conn = ProxiedHTTPS(node.port, encode_header(("198.51.100.8", 40001), ("127.0.0.1", node.port)))
    try:
        tus = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
        conn.request("POST", "/api/v1/cases/C-1/uploads", headers={**tus, "Upload-Length": str(len(data))})
        created = conn.getresponse()
        created.read()
        assert created.status == 201
        path = "/" + created.headers["Location"].split("/", 3)[3]
        patch = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        conn.request("PATCH", path, body=data, headers=patch)
        patched = conn.getresponse()
        patched.read()
        assert patched.status == 204 and patched.headers["Upload-Offset"] == str(len(data))
        conn.request("HEAD", path, headers=tus)
        head = conn.getresponse()
        head.read()
        assert head.status == 200 and head.headers["Upload-Offset"] == str(len(data))
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        engineer = {"Authorization": f"Bearer {node.token('C-1', role='engineer', user='eve')}"}
        conn.request("GET", "/api/v1/cases/C-1/files", headers=engineer)
        listing = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert re.search(r'^eftgw_http_upload_bodies_total\{path="blocks",reason=""\} [1-9]', metrics, re.M)
    assert hashlib.sha256(data).hexdigest() in json.dumps(listing)


def closed_unanswered(port: int, first: bytes, source: str = "127.0.0.1") -> bool:
    """Connect from ``source``, send ``first``: whether the node closes the connection without a byte."""
    with socket.create_connection(("127.0.0.1", port), 15, source_address=(source, 0)) as sock:
        sock.settimeout(15)
        try:
            sock.sendall(first)
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True


CLIENT_HELLO = bytes.fromhex("160301020001000200fc0303") + bytes(32)  # the start of a TLS ClientHello


def test_a_trusted_proxy_must_send_the_header(node: GatewayProcess) -> None:
    """A connection from a trusted proxy without a header, or with a v1 header, is closed before TLS."""
    assert closed_unanswered(node.port, CLIENT_HELLO)
    assert closed_unanswered(node.port, b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n" + CLIENT_HELLO)
    refused = [e for e in log_lines(node) if e["logger"] == "eftgw.proxy" and "refused" in e["event"]]
    assert any("v1" in e["event"] for e in refused)
    assert request(ProxiedHTTPS(node.port, encode_header(None)), "GET", "/healthz") == 200  # LOCAL: a check


def test_a_header_from_an_untrusted_address_is_refused(node: GatewayProcess) -> None:
    """127.0.0.2 is no trusted proxy: its header is refused; without one it is a client with its address."""
    forged = encode_header(("203.0.113.66", 1234))
    assert closed_unanswered(node.port, forged + CLIENT_HELLO, source="127.0.0.2")
    assert request(ProxiedHTTPS(node.port, b"", source="127.0.0.2"), "GET", "/healthz") == 200
    clients = {e["client"] for e in log_lines(node) if e["logger"] == "eftgw.access"}
    assert "127.0.0.2" in clients and "203.0.113.66" not in clients


def sftp_transport(node: GatewayProcess, preamble: bytes, source: str = "127.0.0.1") -> paramiko.Transport:
    sock = socket.create_connection(("127.0.0.1", node.sftp_port), 15, source_address=(source, 0))
    sock.sendall(preamble)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=15)
    except BaseException:
        transport.close()
        sock.close()
        raise
    return transport


def test_sftp_logins_carry_the_client_address_of_the_header(node: GatewayProcess) -> None:
    """A failed and a good SFTP login through the trusted proxy are audited with the header's addresses."""
    account = json.loads(node.cli("sftp-account", "create", "C-1").stdout)
    transport = sftp_transport(node, encode_header(("198.51.100.8", 5555)))
    with pytest.raises(paramiko.AuthenticationException):
        transport.auth_password(account["username"], "wrong-" + account["password"])
    transport.close()
    transport = sftp_transport(node, encode_header(("198.51.100.9", 5556)))
    transport.auth_password(account["username"], account["password"])
    paramiko.SFTPClient.from_transport(transport).listdir(".")  # type: ignore[union-attr]
    transport.close()
    events = audit(node)
    assert [e["remote"] for e in events if e["action"] == "sftp.login_failed"] == ["198.51.100.8"]
    assert "198.51.100.9" in [e["remote"] for e in events if e["action"] == "sftp.login"]


def test_sftp_refuses_a_header_from_an_untrusted_address(node: GatewayProcess) -> None:
    """An SSH connection from 127.0.0.2 that starts with a PROXY header ends before any login."""
    with pytest.raises((paramiko.SSHException, EOFError, ConnectionError)):
        sftp_transport(node, encode_header(("203.0.113.67", 1)), source="127.0.0.2")


def test_every_log_line_is_one_json_object_without_secrets(node: GatewayProcess) -> None:
    """The node's whole output parses line by line as JSON with the documented fields; no token appears."""
    token = node.token("C-1")
    conn = ProxiedHTTPS(node.port, encode_header(("198.51.100.10", 1)))
    assert request(conn, "GET", "/api/v1/cases/C-1/files", Authorization=f"Bearer {token}") == 200
    text = Path(node.log_path).read_text()
    assert token not in text
    lines = log_lines(node)
    fields = {"time", "level", "logger", "node", "region", "request_id", "case", "upload", "client", "event"}
    assert all(fields <= set(line) and line["node"] == "node-p" for line in lines)
    (listing,) = [e for e in lines if e["client"] == "198.51.100.10" and e["logger"] == "eftgw.access"]
    assert listing["request_id"] and listing["region"] == "us"
