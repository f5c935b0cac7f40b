"""The login defender over real logins: failures are counted per account and per address, a success forgives
only its own account's failures, bystanders behind the attacker's address keep logging in, allowlisted
networks are never banned. Clients use 127.0.0.x source addresses to be different addresses."""

from __future__ import annotations

import socket

import paramiko
import pytest
from sftp_support import Account, GatewayFactory, GatewayThread, login_fails, paramiko_sftp

from eftgw.config import Settings

pytestmark = pytest.mark.once  # the defender counts in the node's memory: the backend does not matter here


def logs_in(gateway: GatewayThread, account: Account, source: str) -> bool:
    """Whether ``account`` logs in from ``source`` with its right password (and can list its folder)."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30, source_address=(source, 0))
    try:
        with paramiko_sftp(gateway.port, account, sock=sock) as (_t, sftp):
            sftp.listdir()
            return True
    except (paramiko.SSHException, EOFError, OSError):
        return False


def counting_checks(gateway: GatewayThread) -> dict[str, int]:
    """Count the password checks the gateway makes, per username (the defender refuses before them)."""
    accounts = gateway.gw.accounts
    login = accounts.login_password
    checks: dict[str, int] = {}

    async def counted(username: str, password: str, remote: str | None) -> object:
        checks[username] = checks.get(username, 0) + 1
        return await login(username, password, remote)

    setattr(accounts, "login_password", counted)  # noqa: B010 - replacing a method of one instance
    return checks


def test_a_success_does_not_forgive_failures_against_other_accounts(gateway_factory: GatewayFactory) -> None:
    """Nine wrong passwords for a victim's account, then a login to the attacker's own account, three times
    over from one address: the victim's account is banned from that address at the tenth failure (the
    successes forgave none of them) and later guesses are refused without a password check. The victim
    still logs in from elsewhere, the attacker's own account from the attacker's address."""
    gateway = gateway_factory(failure_delay=0.05)
    own, victim = gateway.account(), gateway.account()
    checks = counting_checks(gateway)
    for _ in range(3):
        for _ in range(9):
            login_fails(gateway.port, victim.username, "guessed-password", source="127.0.0.2")
        assert logs_in(gateway, own, "127.0.0.2")
    assert checks[victim.username] == 10
    assert gateway.sftp.defender.refuses("127.0.0.2", victim.username)
    assert not logs_in(gateway, victim, "127.0.0.2")
    assert logs_in(gateway, victim, "127.0.0.3")
    assert logs_in(gateway, own, "127.0.0.2")


def test_failures_from_an_address_do_not_lock_out_another_customer_there(
    gateway_factory: GatewayFactory,
) -> None:
    """Ten failures for one account from an address (everyone behind one NAT) ban that account from there,
    not the address: another customer logs in from it with the right password, for the first time."""
    gateway = gateway_factory(failure_delay=0.05)
    target, bystander = gateway.account(), gateway.account()
    for _ in range(10):
        login_fails(gateway.port, target.username, "guessed-password", source="127.0.0.2")
    assert not logs_in(gateway, target, "127.0.0.2")
    assert logs_in(gateway, bystander, "127.0.0.2")


def test_many_names_from_one_address_ban_it_except_for_customers_known_there(
    gateway_factory: GatewayFactory,
) -> None:
    """Failures for many names from one address ban the address: a customer who never logged in from there
    is refused, one who did keeps working; the address's new connections are not closed at once while a
    customer is known there. Other addresses are unaffected."""
    gateway = gateway_factory(failure_delay=0.05, defender_options={"address_threshold": 6})
    known, newcomer = gateway.account(), gateway.account()
    assert logs_in(gateway, known, "127.0.0.2")
    for n in range(6):
        login_fails(gateway.port, f"sftp-guess{n:07d}", "guessed-password", source="127.0.0.2")
    defender = gateway.sftp.defender
    assert defender.banned_until("127.0.0.2") is not None
    assert not defender.closes("127.0.0.2")
    assert not logs_in(gateway, newcomer, "127.0.0.2")
    assert logs_in(gateway, known, "127.0.0.2")
    assert logs_in(gateway, newcomer, "127.0.0.3")


def test_a_guess_spread_over_addresses_bans_the_account_where_it_never_logged_in(
    gateway_factory: GatewayFactory,
) -> None:
    """Failures for one account are also counted across addresses: past the account threshold, the account
    is refused from addresses it never logged in from, and still logs in from the one it used before."""
    gateway = gateway_factory(failure_delay=0.05, defender_options={"account_threshold": 4})
    account = gateway.account()
    assert logs_in(gateway, account, "127.0.0.2")
    for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"):
        login_fails(gateway.port, account.username, "guessed-password", source=source)
    assert not logs_in(gateway, account, "127.0.0.7")
    assert logs_in(gateway, account, "127.0.0.2")


def test_an_allowlisted_network_is_never_banned(gateway_factory: GatewayFactory) -> None:
    """``EFTGW_SFTP_DEFENDER_ALLOWLIST`` networks are never scored: past every threshold, the right password
    still logs in from them, while the same failures from elsewhere ban."""
    gateway = gateway_factory(
        failure_delay=0.05, settings={"sftp_defender_allowlist": ["127.0.0.2/31", "::1/128"]}
    )
    account = gateway.account()
    for _ in range(12):
        login_fails(gateway.port, account.username, "guessed-password", source="127.0.0.3")
    assert logs_in(gateway, account, "127.0.0.3")
    for _ in range(10):
        login_fails(gateway.port, account.username, "guessed-password", source="127.0.0.4")
    assert not logs_in(gateway, account, "127.0.0.4")


def test_the_allowlist_setting_takes_comma_separated_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The allowlist is read from the environment as comma-separated CIDRs; a value that is not a network is
    refused with the setting's name."""
    monkeypatch.setenv("EFTGW_SFTP_DEFENDER_ALLOWLIST", "192.0.2.0/24, 2001:db8::/32,10.1.2.3")
    assert Settings().sftp_defender_allowlist == ["192.0.2.0/24", "2001:db8::/32", "10.1.2.3"]
    monkeypatch.setenv("EFTGW_SFTP_DEFENDER_ALLOWLIST", "192.0.2.0/24,office")
    with pytest.raises(ValueError, match="sftp_defender_allowlist"):
        Settings()
