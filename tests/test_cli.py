"""The operators' CLI: case lifecycle and tokens, against the same data as a running gateway."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import GatewayProcess, gateway_process, http_session


async def test_case_lifecycle_and_tokens_work_beside_a_running_gateway(tmp_path: Path) -> None:
    """open/close --at/reopen/show print JSON; a minted customer token works on the running gateway."""
    with gateway_process(tmp_path / "node") as node:
        opened = json.loads(node.cli("case", "open", "CASE-42").stdout)
        assert opened["id"] == "CASE-42" and opened["state"] == "open"
        closed = json.loads(node.cli("case", "close", "CASE-42", "--at", "2026-03-01T10:00:00Z").stdout)
        assert closed["state"] == "closed" and closed["closed_at"] == "2026-03-01T10:00:00Z"
        assert closed["purge_due_at"] == "2026-03-31T10:00:00Z"
        assert json.loads(node.cli("case", "show", "CASE-42").stdout)["state"] == "closed"
        assert json.loads(node.cli("case", "reopen", "CASE-42").stdout)["state"] == "open"
        token = node.token("CASE-42")
        async with (
            http_session() as s,
            s.get(f"{node.url}/api/v1/cases/CASE-42", headers={"Authorization": f"Bearer {token}"}) as resp,
        ):
            assert resp.status == 200 and (await resp.json())["state"] == "open"


def test_cli_errors_are_sentences_not_tracebacks(tmp_path: Path) -> None:
    """Unknown cases and invalid ids end with exit code 2 and a plain message."""
    node = GatewayProcess(tmp_path / "node")
    result = node.cli("case", "show", "NOPE", check=False)
    assert result.returncode == 2 and "not open for file transfer" in result.stderr
    assert "Traceback" not in result.stderr
    result = node.cli("case", "open", "../etc", check=False)
    assert result.returncode == 2 and "Case ids" in result.stderr


def test_serve_makes_a_self_signed_certificate_once(tmp_path: Path) -> None:
    """The first start makes a certificate and keys in the data dir; a restart keeps them."""
    node = GatewayProcess(tmp_path / "node")
    node.start()
    try:
        cert = (tmp_path / "node" / "tls" / "tls-cert.pem").read_bytes()
        key_mode = (tmp_path / "node" / "tls" / "tls-key.pem").stat().st_mode & 0o777
        assert key_mode == 0o600
    finally:
        node.stop()
    node.start()
    try:
        assert (tmp_path / "node" / "tls" / "tls-cert.pem").read_bytes() == cert
        assert "eftgw us gateway: https://127.0.0.1:" in node.log_path.read_text()
    finally:
        node.stop()
