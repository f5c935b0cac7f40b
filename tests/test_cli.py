"""The operators' CLI: case lifecycle and tokens, against the same data as a running gateway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import get_origin

import pytest

from eftgw.config import Settings
from tests.support import (
    ROOT,
    GatewayProcess,
    backend_env,
    client_ssl,
    free_ports,
    gateway_process,
    http_session,
)


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


@pytest.mark.once
def test_cli_errors_are_sentences_not_tracebacks(tmp_path: Path) -> None:
    """Unknown cases and invalid ids end with exit code 2 and a plain message."""
    node = GatewayProcess(tmp_path / "node")
    result = node.cli("case", "show", "NOPE", check=False)
    assert result.returncode == 2 and "not open for file transfer" in result.stderr
    assert "Traceback" not in result.stderr
    result = node.cli("case", "open", "../etc", check=False)
    assert result.returncode == 2 and "Case ids" in result.stderr


@pytest.mark.once
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


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without any EFTGW_* setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EFTGW_")}
    return {**env, "PYTHONPATH": str(ROOT), **settings}


def eftgw(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eftgw", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


BAD_SETTINGS = [
    ("EFTGW_REGION", "eu", "eftgw: EFTGW_REGION='eu' is not allowed; use one of: us, emea, apac", "case"),
    ("EFTGW_REGION", "eu", "eftgw: EFTGW_REGION='eu' is not allowed; use one of: us, emea, apac", "serve"),
    ("EFTGW_REGION", "eu", "eftgw: EFTGW_REGION='eu' is not allowed; use one of: us, emea, apac", "token"),
    ("EFTGW_TLS", "yes", "eftgw: EFTGW_TLS='yes' is not allowed; use one of: on, off", "case"),
    (
        "EFTGW_HTTP_PORT",
        "https",
        "eftgw: EFTGW_HTTP_PORT='https' is not valid: it must be a valid integer",
        "case",
    ),
    (
        "EFTGW_SESSION_TTL",
        "5",
        "eftgw: EFTGW_SESSION_TTL='5' is not valid: it must be greater than or",
        "case",
    ),
]
COMMANDS = {
    "serve": ["serve"],
    "case": ["case", "show", "C-1"],
    "token": ["token", "-", "--role", "engineer"],
}


@pytest.mark.once
@pytest.mark.parametrize(("variable", "value", "line", "command"), BAD_SETTINGS)
def test_a_bad_setting_is_one_line_naming_the_variable(
    tmp_path: Path, variable: str, value: str, line: str, command: str
) -> None:
    """A setting with a wrong value stops every command with exit code 2 and one line that names the
    variable and what it accepts: no traceback, and nothing is created."""
    env = clean_env(EFTGW_DATA_DIR=str(tmp_path / "data"), **{variable: value})
    result = eftgw(*COMMANDS[command], env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "data").exists()


@pytest.mark.once
def test_config_file_problems_are_one_line(tmp_path: Path) -> None:
    """A missing config file, invalid TOML or an unknown key end with one line naming the file and key."""
    env = clean_env(EFTGW_DATA_DIR=str(tmp_path / "data"))
    missing = eftgw("--config", str(tmp_path / "nope.toml"), "case", "show", "C-1", env=env, cwd=tmp_path)
    assert (
        missing.returncode == 2
        and missing.stderr == f"eftgw: config file {tmp_path}/nope.toml does not exist\n"
    )
    (tmp_path / "broken.toml").write_text("region = \n")
    broken = eftgw("--config", str(tmp_path / "broken.toml"), "case", "show", "C-1", env=env, cwd=tmp_path)
    assert (
        broken.returncode == 2 and "is not valid TOML" in broken.stderr and "Traceback" not in broken.stderr
    )
    (tmp_path / "typo.toml").write_text('regoin = "us"\n')
    typo = eftgw("--config", str(tmp_path / "typo.toml"), "case", "show", "C-1", env=env, cwd=tmp_path)
    assert (
        typo.returncode == 2
        and typo.stderr == f"eftgw: 'regoin' in {tmp_path}/typo.toml is not a setting eftgw knows\n"
    )
    (tmp_path / "region.toml").write_text('region = "eu"\n')
    region = eftgw("--config", str(tmp_path / "region.toml"), "case", "show", "C-1", env=env, cwd=tmp_path)
    assert (
        region.stderr
        == f"eftgw: 'region' in {tmp_path}/region.toml='eu' is not allowed; use one of: us, emea, apac\n"
    )


@pytest.mark.once
def test_every_list_setting_takes_the_comma_separated_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """DESIGN.md: every list setting accepts 'a,b' in the environment (and still a JSON list)."""
    list_fields = [
        name for name, info in Settings.model_fields.items() if get_origin(info.annotation) is list
    ]
    assert "cors_origins" in list_fields
    for name in list_fields:
        # Values every list setting accepts (origins are not checked; allowlists must be networks).
        monkeypatch.setenv(f"EFTGW_{name.upper()}", "192.0.2.0/24, 198.51.100.7")
        assert getattr(Settings(), name) == ["192.0.2.0/24", "198.51.100.7"], name
        monkeypatch.setenv(f"EFTGW_{name.upper()}", '["203.0.113.0/24"]')
        assert getattr(Settings(), name) == ["203.0.113.0/24"], name
        monkeypatch.delenv(f"EFTGW_{name.upper()}")


@pytest.mark.once
async def test_cors_origins_as_the_readme_writes_them_work_in_every_command(tmp_path: Path) -> None:
    """EFTGW_CORS_ORIGINS=https://a.example,https://b.example (the README's form) no longer stops the CLI,
    and the running gateway answers a preflight from each of the two origins."""
    origins = {"EFTGW_CORS_ORIGINS": "https://a.example,https://b.example"}
    with gateway_process(tmp_path / "node", origins) as node:
        assert json.loads(node.cli("case", "open", "C-1").stdout)["state"] == "open"
        preflight = {"Access-Control-Request-Method": "PATCH"}
        async with http_session() as s:
            for origin in ("https://a.example", "https://b.example", "https://c.example"):
                url = f"{node.url}/api/v1/cases/C-1/uploads"
                async with s.options(url, headers={**preflight, "Origin": origin}) as resp:
                    allowed = resp.headers.get("Access-Control-Allow-Origin")
                    assert (allowed == origin) == (origin != "https://c.example"), (origin, resp.status)


def test_banner_admin_commands_work_from_any_directory(tmp_path: Path) -> None:
    """`eftgw serve` started in a directory with the default (relative) data dir prints that dir absolute,
    and its 'open a case' and 'upload token' commands, run as printed from another directory, reach this
    gateway's data: the token they mint is accepted, and no second data dir appears."""
    served, elsewhere = tmp_path / "served", tmp_path / "elsewhere"
    served.mkdir()
    elsewhere.mkdir()
    port, sftp_port = free_ports(2)
    backend = backend_env("banner" + uuid.uuid4().hex[:6])
    env = clean_env(EFTGW_HTTP_PORT=str(port), EFTGW_SFTP_PORT=str(sftp_port), **backend)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eftgw", "serve"],
            env=env,
            cwd=served,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "sftp:" not in log_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        banner = log_path.read_text()
        assert f"(data in {served / 'eftgw-data'}," in banner, banner
        commands = dict(
            line.strip().split(":", 1)
            for line in banner.splitlines()
            if line.startswith("  ") and ":" in line
        )
        shell_env = clean_env(**backend)  # the banner names the backend's settings as also needed
        opened = subprocess.run(
            ["bash", "-c", commands["open a case"].strip()],
            env=shell_env,
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(opened.stdout)["id"] == "CASE-1"
        minted = subprocess.run(
            ["bash", "-c", commands["upload token"].strip()],
            env=shell_env,
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/api/v1/cases/CASE-1",
            headers={"Authorization": f"Bearer {minted.stdout.strip()}"},
        )
        with urllib.request.urlopen(request, context=client_ssl(), timeout=30) as resp:  # 401 would raise
            assert resp.status == 200 and json.loads(resp.read())["id"] == "CASE-1"
        assert list(elsewhere.iterdir()) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.once
@pytest.mark.parametrize(
    "args",
    [
        ["token", "-", "--role", "engineer", "--ttl", "99999999999999"],
        ["token", "-", "--role", "engineer", "--ttl", "\u00b2"],
        ["audit", "list", "--limit", "99999999999999999999"],
        ["orphans", "sweep", "--grace", "99999999999999999"],
    ],
)
def test_out_of_range_numbers_on_the_command_line_are_one_line(tmp_path: Path, args: list[str]) -> None:
    """A number argument that is not a whole number in its range is refused by argparse in one line naming
    the option (exit 2), not an OverflowError traceback, and nothing is created."""
    env = clean_env(EFTGW_DATA_DIR=str(tmp_path / "data"))
    result = eftgw(*args, env=env, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"argument {args[-2]}:" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "data").exists()
