"""The IETF resumable uploads draft as its examples show it, over a raw TLS socket to the gateway: creation
with and without ``Upload-Complete``, the 104 interim response, offset retrieval, append, completion,
cancellation, ``Upload-Limit``, problem types, ``Content-Digest``, and tus 1.0 on the same uploads."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from eftgw.model import SYSTEM
from tests.support import RunningGateway, client_ssl, http_session, running_gateway, tus_headers

PROBLEMS = "https://iana.org/assignments/http-problem-types#"


@dataclass
class Message:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    interim: list[Message] = field(default_factory=list)


class Connection:
    """One keep-alive HTTP/1.1 connection over TLS; reads interim (1xx) responses as well as the final one.

    The socket is blocking, so each exchange runs in a thread while the in-process gateway serves it."""

    def __init__(self, sock: ssl.SSLSocket, host: str) -> None:
        self.sock = sock
        self.host = host
        self.buffer = b""

    def _line_block(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed; got {self.buffer!r}"
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed mid-body"
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    async def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None = None
    ) -> Message:
        return await asyncio.to_thread(self._exchange, method, target, headers, body)

    def _exchange(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> Message:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        interim = []
        while True:
            status_line, *header_lines = self._line_block().decode("latin-1").split("\r\n")
            parsed = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
            message = Message(int(status_line.split()[1]), parsed)
            if 100 <= message.status < 200:
                interim.append(message)
                continue
            if method != "HEAD" and message.status not in (204, 304):
                message.body = self._read(int(parsed.get("content-length", "0")))
            message.interim = interim
            return message


def _open(host: str, port: int) -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=30)
    return client_ssl().wrap_socket(raw, server_hostname=host)


@asynccontextmanager
async def connect(gw: RunningGateway) -> AsyncIterator[Connection]:
    parts = urlsplit(gw.url)
    assert parts.hostname is not None and parts.port is not None
    with await asyncio.to_thread(_open, parts.hostname, parts.port) as sock:
        yield Connection(sock, f"{parts.hostname}:{parts.port}")


def draft(token: str, version: int = 8, **extra: str) -> dict[str, str]:
    headers = {"Upload-Draft-Interop-Version": str(version), "Authorization": f"Bearer {token}"}
    headers.update({name.replace("_", "-"): value for name, value in extra.items()})
    return headers


def path_of(url: str) -> str:
    return urlsplit(url).path


def sha256_field(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


async def files_of(gw: RunningGateway, token: str) -> list[dict[str, object]]:
    async with (
        http_session() as s,
        s.get(f"{gw.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        assert resp.status == 200
        files: list[dict[str, object]] = await resp.json()
        return files


async def test_creation_without_content_announces_the_upload_in_a_104_and_keeps_the_connection(
    gw: RunningGateway,
) -> None:
    """A POST with ``Upload-Complete: ?0`` and no content gets a 104 with Location and Upload-Limit, then a
    201 with the same Location, offset 0 and limits; the same connection then serves the offset retrieval."""
    token = gw.token("C-1")
    async with connect(gw) as conn:
        created = await conn.request(
            "POST", "/api/v1/cases/C-1/uploads", draft(token, Upload_Complete="?0", Upload_Length="9"), b""
        )
        assert created.status == 201, created.body
        (interim,) = created.interim
        assert interim.status == 104
        assert interim.headers["location"] == created.headers["location"]
        assert interim.headers["upload-limit"].startswith("min-size=0")
        assert created.headers["upload-offset"] == "0"
        assert created.headers["upload-complete"] == "?0"
        limit = dict(item.split("=") for item in created.headers["upload-limit"].split(", "))
        assert limit["min-size"] == "0" and 0 < int(limit["max-age"]) <= gw.gateway.settings.upload_expiry
        head = await conn.request("HEAD", path_of(created.headers["location"]), draft(token))
    assert head.status == 204
    assert head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == "9"
    assert head.headers["upload-complete"] == "?0"
    assert head.headers["cache-control"] == "no-store"
    assert "max-age=" in head.headers["upload-limit"]


async def test_creation_with_all_content_completes_the_upload_in_one_request(gw: RunningGateway) -> None:
    """Example A: the whole representation with ``Upload-Complete: ?1`` and a Content-Disposition file name
    becomes a file at once; the response says complete and carries its Repr-Digest."""
    token = gw.token("C-1")
    data = b"the whole representation\n" * 1000
    headers = draft(
        token,
        Upload_Complete="?1",
        Upload_Length=str(len(data)),
        Content_Disposition="inline; filename=\"file name.log\"; filename*=UTF-8''file%20name.log",
        Content_Type="text/plain",
    )
    async with connect(gw) as conn:
        created = await conn.request("POST", "/api/v1/cases/C-1/uploads", headers, data)
    assert created.status == 201, created.body
    assert created.interim[0].status == 104
    assert created.headers["upload-complete"] == "?1"
    assert created.headers["upload-offset"] == str(len(data))
    assert created.headers["repr-digest"] == sha256_field(data)
    (record,) = await files_of(gw, token)
    assert record["name"] == "file name.log"
    assert record["sha256"] == hashlib.sha256(data).hexdigest()


async def test_partial_creation_then_appends_to_completion(gw: RunningGateway) -> None:
    """Example B then the append examples: part of the data at creation, offset retrieval, an append with
    ``?0``, then the rest with ``?1``; each acknowledged offset is right; the file has the data's SHA-256."""
    token = gw.token("C-1")
    data = bytes(range(256)) * 4096  # 1 MiB
    async with connect(gw) as conn:
        created = await conn.request(
            "POST",
            "/api/v1/cases/C-1/uploads",
            draft(token, Upload_Complete="?0", Upload_Length=str(len(data))),
            data[:100_000],
        )
        assert created.status == 201, created.body
        assert created.headers["upload-offset"] == "100000"
        assert created.headers["upload-complete"] == "?0"
        target = path_of(created.headers["location"])
        head = await conn.request("HEAD", target, draft(token))
        assert head.headers["upload-offset"] == "100000"
        middle = await conn.request(
            "PATCH",
            target,
            draft(
                token, Upload_Complete="?0", Upload_Offset="100000", Content_Type="application/partial-upload"
            ),
            data[100_000:600_000],
        )
        assert middle.status == 204
        assert middle.headers["upload-offset"] == "600000"
        assert middle.headers["upload-complete"] == "?0"
        last = await conn.request(
            "PATCH",
            target,
            draft(
                token, Upload_Complete="?1", Upload_Offset="600000", Content_Type="application/partial-upload"
            ),
            data[600_000:],
        )
        assert last.status == 204, last.body
        assert last.headers["upload-complete"] == "?1"
        assert last.headers["upload-offset"] == str(len(data))
        assert last.headers["repr-digest"] == sha256_field(data)
        done = await conn.request("HEAD", target, draft(token))
        assert done.headers["upload-complete"] == "?1"
    (record,) = await files_of(gw, token)
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)


async def test_length_unknown_until_the_completing_append(gw: RunningGateway) -> None:
    """Without Upload-Length the upload's length is what was received when an append says ``?1``."""
    token = gw.token("C-1")
    async with connect(gw) as conn:
        created = await conn.request(
            "POST", "/api/v1/cases/C-1/uploads", draft(token, Upload_Complete="?0"), b"abc"
        )
        target = path_of(created.headers["location"])
        head = await conn.request("HEAD", target, draft(token))
        assert head.headers["upload-offset"] == "3" and "upload-length" not in head.headers
        last = await conn.request(
            "PATCH",
            target,
            draft(token, Upload_Complete="?1", Upload_Offset="3", Content_Type="application/partial-upload"),
            b"defg",
        )
        assert last.status == 204 and last.headers["upload-complete"] == "?1"
        assert last.headers["upload-length"] == "7"
    (record,) = await files_of(gw, token)
    assert record["sha256"] == hashlib.sha256(b"abcdefg").hexdigest()


async def test_offset_mismatch_is_a_409_problem_with_the_right_offset(gw: RunningGateway) -> None:
    """An append at the wrong offset is refused with the draft's mismatching-upload-offset problem type."""
    token = gw.token("C-1")
    async with connect(gw) as conn:
        created = await conn.request(
            "POST",
            "/api/v1/cases/C-1/uploads",
            draft(token, Upload_Complete="?0", Upload_Length="10"),
            b"12345",
        )
        target = path_of(created.headers["location"])
        wrong = await conn.request(
            "PATCH",
            target,
            draft(token, Upload_Complete="?0", Upload_Offset="7", Content_Type="application/partial-upload"),
            b"xyz",
        )
        head = await conn.request("HEAD", target, draft(token))
    assert wrong.status == 409
    assert wrong.headers["content-type"].startswith("application/problem+json")
    assert wrong.headers["upload-offset"] == "5" and wrong.headers["upload-complete"] == "?0"
    problem = json.loads(wrong.body)
    assert problem["type"] == PROBLEMS + "mismatching-upload-offset"
    assert problem["expected-offset"] == 5 and problem["provided-offset"] == 7
    assert head.headers["upload-offset"] == "5"


async def test_inconsistent_length_is_a_400_problem(gw: RunningGateway) -> None:
    """Upload-Length that disagrees with the completing content, or with the upload's length, is refused with
    the inconsistent-upload-length problem type and nothing is appended."""
    token = gw.token("C-1")
    async with connect(gw) as conn:
        refused = await conn.request(
            "POST",
            "/api/v1/cases/C-1/uploads",
            draft(token, Upload_Complete="?1", Upload_Length="99"),
            b"abc",
        )
        assert refused.status == 400
        assert json.loads(refused.body)["type"] == PROBLEMS + "inconsistent-upload-length"
        created = await conn.request(
            "POST", "/api/v1/cases/C-1/uploads", draft(token, Upload_Complete="?0", Upload_Length="10"), b""
        )
        target = path_of(created.headers["location"])
        changed = await conn.request(
            "PATCH",
            target,
            draft(
                token,
                Upload_Complete="?0",
                Upload_Offset="0",
                Upload_Length="11",
                Content_Type="application/partial-upload",
            ),
            b"abc",
        )
        assert changed.status == 400
        assert json.loads(changed.body)["type"] == PROBLEMS + "inconsistent-upload-length"
        assert (await conn.request("HEAD", target, draft(token))).headers["upload-offset"] == "0"


async def test_cancellation_deletes_the_upload(gw: RunningGateway) -> None:
    """DELETE cancels: 204, the stored data is gone and the resource answers 410 afterwards."""
    token = gw.token("C-1")
    async with connect(gw) as conn:
        created = await conn.request(
            "POST",
            "/api/v1/cases/C-1/uploads",
            draft(token, Upload_Complete="?0", Upload_Length="10"),
            b"12345",
        )
        target = path_of(created.headers["location"])
        upload_id = target.rsplit("/", 1)[1]
        cancelled = await conn.request("DELETE", target, draft(token))
        after = await conn.request("HEAD", target, draft(token))
    assert cancelled.status == 204
    assert after.status == 410
    upload = await gw.gateway.repo.get_upload(upload_id)
    assert upload is not None and upload.state.value == "terminated"


async def test_content_digest_checks_each_request(gw: RunningGateway) -> None:
    """A Content-Digest (sha-256) that does not match the content keeps nothing of it (400, offset unchanged);
    a matching one, or one of an algorithm the gateway does not check, is accepted."""
    token = gw.token("C-1")
    partial = {"Content_Type": "application/partial-upload", "Upload_Complete": "?0"}
    async with connect(gw) as conn:
        created = await conn.request(
            "POST", "/api/v1/cases/C-1/uploads", draft(token, Upload_Complete="?0", Upload_Length="9"), b""
        )
        target = path_of(created.headers["location"])
        bad = await conn.request(
            "PATCH",
            target,
            draft(token, Upload_Offset="0", Content_Digest=sha256_field(b"other"), **partial),
            b"abc",
        )
        assert bad.status == 400 and json.loads(bad.body)["code"] == "checksum_mismatch"
        assert bad.headers["upload-offset"] == "0"
        good = await conn.request(
            "PATCH",
            target,
            draft(token, Upload_Offset="0", Content_Digest="md5=:AAAA:, " + sha256_field(b"abc"), **partial),
            b"abc",
        )
        assert good.status == 204 and good.headers["upload-offset"] == "3"
        unknown = await conn.request(
            "PATCH", target, draft(token, Upload_Offset="3", Content_Digest="md5=:AAAA:", **partial), b"def"
        )
        assert unknown.status == 204 and unknown.headers["upload-offset"] == "6"
        malformed = await conn.request(
            "PATCH", target, draft(token, Upload_Offset="6", Content_Digest="sha-256=nope", **partial), b"ghi"
        )
        assert malformed.status == 400
        assert (await conn.request("HEAD", target, draft(token))).headers["upload-offset"] == "6"


async def test_same_auth_and_case_isolation_as_tus(gw: RunningGateway) -> None:
    """No token is a 401; another case's token sees the upload URL as 404 for every draft method."""
    await gw.gateway.cases.open(SYSTEM, "C-2")
    token = gw.token("C-1")
    other = gw.token("C-2")
    async with connect(gw) as conn:
        anonymous = await conn.request(
            "POST",
            "/api/v1/cases/C-1/uploads",
            {"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?0"},
            b"",
        )
        assert anonymous.status == 401
        created = await conn.request(
            "POST", "/api/v1/cases/C-1/uploads", draft(token, Upload_Complete="?0"), b"ab"
        )
        target = path_of(created.headers["location"])
        assert (await conn.request("HEAD", target, draft(other))).status == 404
        patch_headers = draft(
            other, Upload_Complete="?0", Upload_Offset="2", Content_Type="application/partial-upload"
        )
        assert (await conn.request("PATCH", target, patch_headers, b"cd")).status == 404
        assert (await conn.request("DELETE", target, draft(other))).status == 404
        assert (await conn.request("HEAD", target, draft(token))).headers["upload-offset"] == "2"


async def test_tus_and_the_draft_continue_the_same_upload(gw: RunningGateway) -> None:
    """An upload created with the draft is continued and finished with tus 1.0 (and seen by both)."""
    token = gw.token("C-1")
    async with connect(gw) as conn:
        created = await conn.request(
            "POST", "/api/v1/cases/C-1/uploads", draft(token, Upload_Complete="?0", Upload_Length="6"), b"abc"
        )
    url = created.headers["location"]
    async with http_session() as s:
        async with s.head(url, headers=tus_headers(token)) as resp:
            assert resp.status == 200 and resp.headers["Upload-Offset"] == "3"
        headers = tus_headers(token, Upload_Offset="3", Content_Type="application/offset+octet-stream")
        async with s.patch(url, data=b"def", headers=headers) as resp:
            assert resp.status == 204 and resp.headers["Upload-Offset"] == "6"
    async with connect(gw) as conn:
        head = await conn.request("HEAD", path_of(url), draft(token))
    assert head.headers["upload-complete"] == "?1"
    (record,) = await files_of(gw, token)
    assert record["sha256"] == hashlib.sha256(b"abcdef").hexdigest()


async def test_interop_versions_and_media_types(gw: RunningGateway) -> None:
    """Interop versions 5 to 8 are spoken; 6 and later need application/partial-upload on appends (415
    otherwise), 5 (tus-js-client's ietf-draft-03) does not; an unknown version is a 412."""
    token = gw.token("C-1")
    async with connect(gw) as conn:
        unknown = await conn.request(
            "POST", "/api/v1/cases/C-1/uploads", draft(token, 99, Upload_Complete="?0"), b""
        )
        assert unknown.status == 412
        assert json.loads(unknown.body)["code"] == "interop_version_unsupported"
        for version in (5, 6, 7, 8):
            created = await conn.request(
                "POST", "/api/v1/cases/C-1/uploads", draft(token, version, Upload_Complete="?0"), b""
            )
            assert created.status == 201
            assert created.headers["upload-draft-interop-version"] == str(version)
            target = path_of(created.headers["location"])
            octets = draft(
                token,
                version,
                Upload_Complete="?1",
                Upload_Offset="0",
                Content_Type="application/offset+octet-stream",
            )
            answer = await conn.request("PATCH", target, octets, b"v")
            assert answer.status == (204 if version == 5 else 415), (version, answer.body)
        missing = await conn.request("POST", "/api/v1/cases/C-1/uploads", draft(token), b"")
        assert missing.status == 400


async def test_upload_limit_announces_and_enforces_the_maximum_size(tmp_path: Path) -> None:
    """With a maximum upload size, OPTIONS and creation say max-size, and a longer upload is refused (413)."""
    async with running_gateway(tmp_path / "gw", max_upload_size=1000) as gw:
        await gw.gateway.cases.open(SYSTEM, "C-1")
        token = gw.token("C-1")
        async with connect(gw) as conn:
            options = await conn.request("OPTIONS", "/api/v1/cases/C-1/uploads", {})
            assert options.status == 204
            assert options.headers["upload-limit"] == "min-size=0, max-size=1000"
            created = await conn.request(
                "POST", "/api/v1/cases/C-1/uploads", draft(token, Upload_Complete="?0"), b""
            )
            assert "max-size=1000" in created.headers["upload-limit"]
            too_long = await conn.request(
                "POST",
                "/api/v1/cases/C-1/uploads",
                draft(token, Upload_Complete="?0", Upload_Length="1001"),
                b"",
            )
            assert too_long.status == 413


def _send_part_then_cut(host: str, port: int, request: bytes, content: bytes) -> Message:
    """Send a request's head and part of its content, read the 104, then drop the connection."""
    with _open(host, port) as sock:
        conn = Connection(sock, f"{host}:{port}")
        sock.sendall(request + content)
        head = conn._line_block().decode("latin-1").split("\r\n")
        headers = dict(
            (k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in head[1:])
        )
        return Message(int(head[0].split()[1]), headers)


async def test_interrupted_creation_resumes_from_the_104_location(gw: RunningGateway) -> None:
    """Example C: the connection drops during a creation whose final response never comes; the 104 gave the
    upload URL, offset retrieval says how much was kept, and appends from there complete the file."""
    token = gw.token("C-1")
    data = bytes(range(256)) * 2048  # 512 KiB
    parts = urlsplit(gw.url)
    assert parts.hostname is not None and parts.port is not None
    head = "\r\n".join(
        [
            "POST /api/v1/cases/C-1/uploads HTTP/1.1",
            f"Host: {parts.hostname}:{parts.port}",
            *(f"{k}: {v}" for k, v in draft(token, Upload_Complete="?1").items()),
            f"Content-Length: {len(data)}",
        ]
    )
    interim = await asyncio.to_thread(
        _send_part_then_cut, parts.hostname, parts.port, (head + "\r\n\r\n").encode(), data[:200_000]
    )
    assert interim.status == 104
    target = path_of(interim.headers["location"])
    async with connect(gw) as conn:
        for _ in range(200):  # the cut request may still hold the upload for a moment: 409/423 say so
            offset = (await conn.request("HEAD", target, draft(token))).headers["upload-offset"]
            assert int(offset) <= 200_000
            answer = await conn.request(
                "PATCH",
                target,
                draft(
                    token,
                    Upload_Complete="?1",
                    Upload_Offset=offset,
                    Content_Type="application/partial-upload",
                ),
                data[int(offset) :],
            )
            if answer.status in (409, 423):
                await asyncio.sleep(0.1)
                continue
            assert answer.status == 204, answer.body
            assert answer.headers["upload-complete"] == "?1"
            break
    (record,) = await files_of(gw, token)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()


async def test_cors_lets_configured_origins_speak_the_draft(tmp_path: Path) -> None:
    """A configured origin's preflight may send the draft's request fields and reads its response fields."""
    async with running_gateway(tmp_path / "gw", cors_origins=["https://portal.example"]) as gw:
        await gw.gateway.cases.open(SYSTEM, "C-1")
        origin = {"Origin": "https://portal.example"}
        async with connect(gw) as conn:
            preflight = await conn.request(
                "OPTIONS", "/api/v1/cases/C-1/uploads", {**origin, "Access-Control-Request-Method": "POST"}
            )
            created = await conn.request(
                "POST",
                "/api/v1/cases/C-1/uploads",
                {**draft(gw.token("C-1"), Upload_Complete="?0"), **origin},
                b"",
            )
        allowed = preflight.headers["access-control-allow-headers"].split(", ")
        assert {"Upload-Draft-Interop-Version", "Upload-Complete", "Content-Digest"} <= set(allowed)
        exposed = created.headers["access-control-expose-headers"].split(", ")
        assert {"Upload-Complete", "Upload-Limit", "Upload-Offset", "Location"} <= set(exposed)
