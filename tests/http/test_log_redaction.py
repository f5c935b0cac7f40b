"""No credential reaches any log line, whoever writes it: the session cookie, bearer and launch tokens and
CSRF tokens stay out of the gateway's log even when a client sends them in an oversized header line, which
aiohttp itself refuses and (by default) logs verbatim."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from eftgw.logs import install_redaction, redact
from tests.http.rawhttp import raw_request
from tests.support import free_port, gateway_process, http_session, tls_context

# Aiohttp refuses the header lines before any handler: the backend does not matter here.
pytestmark = pytest.mark.once

PAD = "x" * 9000  # longer than aiohttp's 8190-byte limit for one header line


def oversized_requests(
    cookie: str, access: str, launch: str, csrf: str
) -> list[tuple[str, list[tuple[str, str]]]]:
    """Requests that aiohttp refuses before any handler runs, each carrying a live credential."""
    return [
        ("/api/v1/session", [("Cookie", f"__Host-eftgw_session={cookie}; pad={PAD}")]),
        ("/api/v1/session", [("Cookie", f"__Host-eftgw_session={cookie}{PAD}")]),
        ("/api/v1/session", [("Cookie", f"theme=dark; __Host-eftgw_session={cookie}; pad={PAD}")]),
        ("/api/v1/cases/C-1/files", [("Authorization", f"Bearer {access}{PAD}")]),
        ("/api/v1/cases/C-1/files", [("Authorization", f"Bearer {access}"), ("X-Pad", PAD)]),
        (f"/launch?token={launch}&pad={PAD}", []),
        (f"/app#token={launch}{PAD}", []),
        ("/api/v1/session", [("X-CSRF-Token", f"{csrf}{PAD}"), ("Cookie", f"__Host-eftgw_session={cookie}")]),
        ("/api/v1/session", [("Referer", f"https://portal.example/launch#token={launch}&pad={PAD}")]),
    ]


def assert_no_secret(log: str, secrets: dict[str, str]) -> None:
    for name, secret in secrets.items():
        # Quoted lines are cut short: not even the start of a secret may show.
        assert secret[:16] not in log, f"{name} is in the log"


async def test_oversized_headers_never_put_credentials_in_the_gateway_log(tmp_path: Path) -> None:
    """Against a real `eftgw serve`: oversized Cookie, Authorization, request line, CSRF and Referer lines
    carrying a live session cookie, access token, launch token and CSRF token are refused with a 4xx, and
    none of those values appears in any line of the process's log."""
    with gateway_process(tmp_path / "node") as node:
        node.open_case("C-1")
        access = node.token("C-1")
        launch = node.cli("token", "C-1", "--role", "customer", "--launch").stdout.strip()
        spare_launch = node.cli("token", "C-1", "--role", "customer", "--launch").stdout.strip()
        async with http_session() as s, s.post(f"{node.url}/api/v1/session", json={"token": launch}) as resp:
            assert resp.status == 201
            csrf = (await resp.json())["csrf_token"]
            cookie = resp.cookies["__Host-eftgw_session"].value
        for target, headers in oversized_requests(cookie, access, spare_launch, csrf):
            answer = await raw_request(node.url, "GET", target, headers)
            assert 400 <= answer.status < 500, (target[:40], answer.status)
        # The same credentials in well-formed requests, refused and accepted, are not logged either.
        async with http_session() as s:
            async with s.get(
                f"{node.url}/api/v1/cases/C-1/files", headers={"Authorization": f"Bearer {access}"}
            ) as r:
                assert r.status == 200
            async with s.delete(
                f"{node.url}/api/v1/session", headers={"Cookie": f"__Host-eftgw_session={cookie}"}
            ) as r:
                assert r.status == 403  # no CSRF token
    log = node.log_path.read_text()
    assert_no_secret(log, {"cookie": cookie, "access": access, "launch": spare_launch, "csrf": csrf})
    assert "refused a malformed request" in log and "Traceback" not in log


@pytest.fixture
def redaction() -> Iterator[None]:
    """The gateway process's record factory, for this test only."""
    before = logging.getLogRecordFactory()
    install_redaction()
    try:
        yield
    finally:
        logging.setLogRecordFactory(before)


class JsonLines(logging.Formatter):
    """A JSON formatter of the usual kind, to prove redaction does not depend on the formatter."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"logger": record.name, "level": record.levelname, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out)


async def test_aiohttp_own_bad_request_log_is_redacted_for_any_formatter(
    tmp_path: Path, redaction: None, caplog: pytest.LogCaptureFixture
) -> None:
    """With aiohttp's default logger (which quotes the raw header line with its traceback), the redacting
    record factory still keeps the session cookie and bearer token out of text and JSON output."""
    caplog.set_level(logging.DEBUG)
    stream = tmp_path / "json.log"
    handler = logging.FileHandler(stream)
    handler.setFormatter(JsonLines())
    logging.getLogger().addHandler(handler)
    cookie, token = "S3cretSessionValue" + "a" * 30, "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    try:
        async with BareAiohttpServer(tmp_path) as url:
            for headers in (
                [("Cookie", f"__Host-eftgw_session={cookie}; pad={PAD}")],
                [("Authorization", f"Bearer {token}{PAD}")],
            ):
                assert (await raw_request(url, "GET", "/api/v1/session", headers)).status == 400
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(records) == 2 and all(r.exc_text and "LineTooLong" in r.exc_text for r in records)
    text = caplog.text + "\n".join(r.exc_text or "" for r in records) + stream.read_text()
    assert "LineTooLong" in stream.read_text()
    assert_no_secret(text, {"cookie": cookie, "token": token})


class BareAiohttpServer:
    """A bare aiohttp server with aiohttp's default logging (no ProtocolLog), on a TLS loopback socket."""

    def __init__(self, tmp_path: Path) -> None:
        from tests.support import settings_for

        self.settings = settings_for(tmp_path / "bare")
        self.runner = web.AppRunner(web.Application())

    async def __aenter__(self) -> str:
        port = free_port()
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=tls_context(self.settings)).start()
        return f"https://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("Cookie: __Host-eftgw_session=abcDEF123_-; theme=dark", "theme=dark"),
        ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer"),
        ("Authorization: Basic YWxpY2U6c2VjcmV0", "Basic"),
        ("GET /launch?token=eyJhbGciOi.eyJzdWIi.sig HTTP/1.1", "GET /launch?token="),
        ('{"token": "eyJhbGciOi", "user": "alice"}', '"user": "alice"'),
        ('{"password": "hunter2hunter2", "username": "case-1"}', '"username": "case-1"'),
        ("X-CSRF-Token: k9Ck9Ck9Ck9C", "X-CSRF-Token"),
        ("webhook secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "webhook secret"),
        ("b'eyJhbGciOiJFZERTQSIsImtpZCI6Imd3LWQ3...'", "b'"),
    ],
)
def test_redaction_removes_each_credential_shape(line: str, kept: str) -> None:
    """Each shape a credential takes in a log line is replaced; the text around it stays readable."""
    out = redact(line)
    assert "[redacted]" in out and kept in out
    for secret in ("abcDEF123", "abc.def", "YWxpY2U6", "eyJhbGciOi", "hunter2", "k9Ck9C", "MfKQ9r8G"):
        assert secret not in out
