"""Temporary SFTP accounts: created for a case by operators or the portal, shown again while active,
listed, revoked, stored without the password in clear, valid for 120 hours."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sftp_support import (
    OPERATOR,
    Account,
    ClientKey,
    GatewayThread,
    eftgw_cli,
    login_fails,
    paramiko_sftp,
    settings_for,
)

from eftgw.accounts import AccountInactive, PasswordSealer, load_or_create_account_key
from eftgw.clock import parse_instant
from eftgw.errors import BadRequest, CaseClosed, CaseNotFound, Forbidden
from eftgw.gateway import Gateway
from eftgw.metadata import schema
from eftgw.model import Principal, Role


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Gateway]:
    gateway = Gateway.build(settings_for(tmp_path / "data"))
    await gateway.start()
    await gateway.cases.open(OPERATOR, "CASE-1")
    yield gateway
    await gateway.close()


def test_cli_create_prints_the_login_valid_for_120_hours(tmp_path: Path) -> None:
    """``eftgw sftp-account create CASE_ID`` prints JSON with username, password, host, port and an expiry
    120 hours after creation; ``show`` prints the same credentials again; ``list`` shows the account."""
    data = tmp_path / "data"
    env = {"EFTGW_SFTP_PORT": "22222", "EFTGW_PUBLIC_URL": "https://files.example.com"}
    assert eftgw_cli(data, "case", "open", "CASE-7", env=env).returncode == 0
    created = eftgw_cli(data, "sftp-account", "create", "CASE-7", env=env)
    assert created.returncode == 0, created.stderr
    issued = json.loads(created.stdout)
    assert {"username", "password", "host", "port", "expires_at"} <= set(issued)
    assert (issued["host"], issued["port"], issued["case_id"]) == ("files.example.com", 22222, "CASE-7")
    lifetime = parse_instant(issued["expires_at"]) - parse_instant(issued["created_at"])
    assert lifetime == dt.timedelta(hours=120)
    assert len(issued["password"]) >= 20
    shown = json.loads(eftgw_cli(data, "sftp-account", "show", issued["username"], env=env).stdout)
    assert (shown["username"], shown["password"], shown["expires_at"]) == (
        issued["username"],
        issued["password"],
        issued["expires_at"],
    )
    listed = json.loads(eftgw_cli(data, "sftp-account", "list", "CASE-7", env=env).stdout)
    assert [(a["username"], a["state"]) for a in listed] == [(issued["username"], "active")]
    assert "password" not in listed[0]


def test_cli_show_refuses_after_revocation_and_after_expiry(tmp_path: Path) -> None:
    """Once revoked, or 120 hours on (a shifted clock), the credentials are not shown any more."""
    data = tmp_path / "data"
    eftgw_cli(data, "case", "open", "CASE-1")
    first = json.loads(eftgw_cli(data, "sftp-account", "create", "CASE-1").stdout)
    second = json.loads(eftgw_cli(data, "sftp-account", "create", "CASE-1").stdout)
    revoked = eftgw_cli(data, "sftp-account", "revoke", first["username"])
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["state"] == "revoked"
    refused = eftgw_cli(data, "sftp-account", "show", first["username"])
    assert refused.returncode == 2 and "expired or was revoked" in refused.stderr
    later = {"EFTGW_CLOCK_OFFSET": str(120 * 3600 + 1)}
    assert eftgw_cli(data, "sftp-account", "show", second["username"], env=later).returncode == 2
    states = {
        a["username"]: a["state"]
        for a in json.loads(eftgw_cli(data, "sftp-account", "list", env=later).stdout)
    }
    assert states == {first["username"]: "revoked", second["username"]: "expired"}


def test_an_account_made_by_a_shifted_clock_stops_logging_in_when_it_expires(
    gateway: GatewayThread, tmp_path: Path
) -> None:
    """An account created by the CLI with its clock shifted 120 hours minus 2 minutes back logs in now and
    is refused once those minutes have passed on the gateway's clock (moved on rather than waited for: the
    CLI alone can take seconds on a loaded machine)."""
    gateway.open_case("CASE-1")
    shifted = {"EFTGW_CLOCK_OFFSET": str(-(120 * 3600 - 120))}
    issued = json.loads(eftgw_cli(gateway.data_dir, "sftp-account", "create", "CASE-1", env=shifted).stdout)
    account = Account(issued["username"], issued["password"], "CASE-1")
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        assert sftp.listdir() == []
    gateway.clock.offset = dt.timedelta(seconds=121)
    login_fails(gateway.port, account.username, account.password)


def test_the_password_is_kept_as_an_argon2id_hash_and_sealed_never_in_clear(tmp_path: Path) -> None:
    """The database holds an argon2id hash and an AES-GCM sealed copy (opened only with the 0600 key file
    in the data dir); the password itself appears in no column of the accounts table (nor, with SQLite, in
    the database files)."""
    data = tmp_path / "data"
    eftgw_cli(data, "case", "open", "CASE-1")
    issued = json.loads(eftgw_cli(data, "sftp-account", "create", "CASE-1").stdout)
    key_file = data / "keys" / "sftp-accounts.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    for db_file in data.glob("eftgw.sqlite3*"):
        assert issued["password"].encode() not in db_file.read_bytes()

    async def stored() -> tuple[str, str]:
        gateway = Gateway.build(settings_for(data))
        await gateway.start()
        try:
            async with gateway.repo.engine.connect() as conn:
                rows = [tuple(row) for row in await conn.execute(sa.select(schema.sftp_accounts))]
            assert issued["password"] not in repr(rows)
            account = await gateway.repo.get_account(issued["username"])
            assert account is not None
            return account.password_hash, account.password_sealed
        finally:
            await gateway.close()

    password_hash, sealed = asyncio.run(stored())
    assert password_hash.startswith("$argon2id$")
    sealer = PasswordSealer(load_or_create_account_key(key_file))
    assert sealer.unseal(issued["username"], sealed) == issued["password"]
    with pytest.raises(ValueError):
        sealer.unseal("sftp-someoneelse00", sealed)  # bound to its username
    with pytest.raises(ValueError):
        PasswordSealer(bytes(32)).unseal(issued["username"], sealed)


async def test_accounts_are_made_for_open_cases_by_operators_engineers_and_the_portal(core: Gateway) -> None:
    """An unknown or closed case gets no account, and customers cannot create, show or revoke accounts."""
    with pytest.raises(CaseNotFound):
        await core.accounts.create(OPERATOR, "NO-SUCH-CASE")
    await core.cases.open(OPERATOR, "CLOSED-1")
    await core.cases.close(OPERATOR, "CLOSED-1")
    with pytest.raises(CaseClosed):
        await core.accounts.create(OPERATOR, "CLOSED-1")
    engineer = Principal("eng", Role.ENGINEER)
    issued = await core.accounts.create(engineer, "CASE-1")
    customer = Principal("cust", Role.CUSTOMER, "CASE-1")
    for attempt in (
        core.accounts.create(customer, "CASE-1"),
        core.accounts.show(customer, issued.account.username),
        core.accounts.revoke(customer, issued.account.username),
    ):
        with pytest.raises(Forbidden):
            await attempt
    assert (await core.accounts.show(OPERATOR, issued.account.username)).password == issued.password


async def test_authorized_keys_must_be_openssh_public_keys(core: Gateway, client_key: ClientKey) -> None:
    """Keys are checked when stored and kept as ``type base64``; anything else is refused."""
    issued = await core.accounts.create(OPERATOR, "CASE-1", authorized_keys=[client_key.public_line])
    assert issued.account.authorized_keys == [" ".join(client_key.public_line.split()[:2])]
    for bad in ("not a key", "ssh-ed25519 !!!notbase64", "ssh-dss AAAAB3NzaC1kc3MAAACBAP", ""):
        with pytest.raises(BadRequest):
            await core.accounts.create(OPERATOR, "CASE-1", authorized_keys=[bad])
    await core.accounts.revoke(OPERATOR, issued.account.username)
    with pytest.raises(AccountInactive):
        await core.accounts.add_key(OPERATOR, issued.account.username, client_key.public_line)


async def test_purging_a_case_removes_its_accounts(core: Gateway) -> None:
    """Deleting a case's rows (what a purge does) deletes its SFTP accounts too."""
    issued = await core.accounts.create(OPERATOR, "CASE-1")
    await core.repo.delete_purged_cases(["CASE-1"], [])
    assert await core.repo.get_account(issued.account.username) is None
    assert await core.accounts.list_accounts(OPERATOR) == []


def test_passwords_never_start_or_end_with_punctuation() -> None:
    """Generated passwords start and end with a letter or digit, so no command-line client reads one as an
    option (rclone took a password beginning with '-' for a flag)."""
    from eftgw.accounts import new_password

    passwords = [new_password() for _ in range(2000)]
    assert all(p[0].isalnum() and p[-1].isalnum() and len(p) == 24 for p in passwords)
    assert len(set(passwords)) == len(passwords)
