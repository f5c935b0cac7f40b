"""HTTP/1.1 by hand over a real TLS socket: for requests no well-behaved client library will send
(non-ASCII header values, oversized header lines) and for connections cut in the middle of a response."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from tests.support import client_ssl


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def _open(url: str) -> tuple[socket.socket, str]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    if parts.scheme == "https":
        sock = client_ssl().wrap_socket(sock, server_hostname=parts.hostname)
    return sock, f"{parts.hostname}:{parts.port}"


def _request_bytes(method: str, target: str, host: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def _parse(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), headers, body)


def _exchange(url: str, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> RawResponse:
    sock, host = _open(url)
    with sock:
        sock.sendall(_request_bytes(method, target, host, headers, body))
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return _parse(b"".join(chunks))


async def raw_request(
    url: str, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""
) -> RawResponse:
    """Send exactly these header lines (UTF-8) to the gateway at ``url`` and read the whole answer."""
    return await asyncio.to_thread(_exchange, url, method, target, headers, body)


def _read_then_cut(url: str, target: str, headers: list[tuple[str, str]], keep: int) -> bytes:
    sock, host = _open(url)
    received = b""
    with sock:
        sock.sendall(_request_bytes("GET", target, host, headers, b""))
        while len(received) < keep:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        # An abortive close (RST), as a killed curl or aria2c dropping a segment does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return received


async def download_and_hang_up(url: str, target: str, headers: list[tuple[str, str]], keep: int) -> bytes:
    """Start a download, read about ``keep`` bytes of the answer, then reset the connection."""
    return await asyncio.to_thread(_read_then_cut, url, target, headers, keep)
